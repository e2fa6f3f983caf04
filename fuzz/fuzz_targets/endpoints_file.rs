//! Any bytes as the endpoints file, after a good one was loaded: loaded or refused, never a panic,
//! and a refused file leaves the published pods exactly as they were.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prefix_router::discovery::static_file::StaticFile;
use prefix_router::discovery::Registry;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("endpoints.yaml");
    std::fs::write(&path, "models:\n  - name: m\n    endpoints: [\"10.0.0.1:8000\", \"[::1]:80\"]\n").expect("write");
    let registry = Registry::new();
    let mut file = StaticFile::new(path.clone());
    file.load_into(&registry).expect("the good file loads");
    let before: Vec<String> = registry.snapshot().endpoints().map(|e| format!("{}/{}", e.model, e.addr)).collect();
    std::fs::write(&path, data).expect("write");
    if file.load_into(&registry).is_err() {
        let after: Vec<String> = registry.snapshot().endpoints().map(|e| format!("{}/{}", e.model, e.addr)).collect();
        assert_eq!(before, after, "a refused file changed nothing");
    }
});
