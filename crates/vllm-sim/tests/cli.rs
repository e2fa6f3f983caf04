//! The binary's command line: start-up errors are clear and exit with status 2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn a_missing_tokenizer_directory_stops_start_up_with_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vllm-sim"))
        .args(["--port", "0", "--model", "m", "--tokenizer", "/no/such/dir"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tokenizer") && err.contains("/no/such/dir"), "{err}");
}
