//! prefix-router: an Envoy ext_proc sidecar that routes each OpenAI-style request to the vLLM pod
//! most likely to hold its prompt prefix in KV cache. Modules import only downward:
//! `server` → (`extproc`, `kv_events`) → `routing` → (`tokenizer`, `discovery`, `metrics`) → the `prefix-index`
//! and `hf-chat` crates.

pub mod config;
pub mod discovery;
pub mod extproc;
pub mod kv_events;
pub mod metrics;
pub mod openai;
pub mod routing;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod tokenizer;

#[cfg(test)]
mod testkit;

/// The Qwen3 tokenizer shipped beside the repository, for unit tests.
#[cfg(test)]
pub(crate) fn test_fixture_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/qwen3")
}
