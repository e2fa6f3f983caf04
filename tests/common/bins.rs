//! Where the workspace's binaries are. `prefix-router` is this package's own (Cargo names it);
//! `vllm-sim` is another member's, built beside it in the same target directory by
//! `cargo build --workspace --bins` or by `cargo test` at the root (the sim's own tests need it).

use std::path::PathBuf;

/// `vllm-sim` in the target directory of the running test or bench (`VLLM_SIM_BIN` overrides).
pub(crate) fn vllm_sim() -> PathBuf {
    if let Some(p) = std::env::var_os("VLLM_SIM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/vllm-sim
    let dir = exe.parent().and_then(|d| d.parent()).map(PathBuf::from).unwrap_or_default();
    let bin = dir.join(format!("vllm-sim{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` (add --release for benches)",
        bin.display()
    );
    bin
}
