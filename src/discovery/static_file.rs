//! The embedded default: a YAML file of models and their endpoints, re-read when it changes.
//!
//! ```yaml
//! models:
//!   - name: tiny-chat
//!     engine: vllm                  # optional, default vllm
//!     tokenizer: path/to/tokenizer  # optional; relative to this file
//!     endpoints: ["127.0.0.1:8001", "127.0.0.1:8002"]
//! ```

use super::{DiscoveryError, EndpointSpec, Engine, ModelSpec, Registry};
use hf_chat::HfTokenizer;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    models: Vec<ModelEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    name: String,
    #[serde(default)]
    engine: Option<String>,
    #[serde(default)]
    tokenizer: Option<PathBuf>,
    #[serde(default)]
    endpoints: Vec<String>,
}

/// Reads the file and publishes it, then re-reads it every `poll` and republishes when its bytes
/// change. A bad file at start-up is an error; a bad edit later is logged and the last good
/// state kept.
pub struct StaticFile {
    path: PathBuf,
    tokenizers: HashMap<PathBuf, Arc<HfTokenizer>>,
    last: Option<u64>,
}

impl StaticFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path, tokenizers: HashMap::new(), last: None }
    }

    /// Loads once; `Ok(false)` if the file has not changed since the last load.
    pub fn load_into(&mut self, registry: &Registry) -> Result<bool, DiscoveryError> {
        let shown = self.path.display().to_string();
        let err = |message: String| DiscoveryError::File { path: shown.clone(), message };
        let bytes = std::fs::read(&self.path).map_err(|e| err(e.to_string()))?;
        let digest = xxhash_rust::xxh3::xxh3_64(&bytes);
        if self.last == Some(digest) {
            return Ok(false);
        }
        let file: File = serde_yaml::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
        let specs = self.specs(file).map_err(err)?;
        registry.publish(specs);
        self.last = Some(digest);
        Ok(true)
    }

    fn specs(&mut self, file: File) -> Result<Vec<ModelSpec>, String> {
        let base = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut seen = std::collections::HashSet::new();
        let mut specs = Vec::with_capacity(file.models.len());
        for m in file.models {
            if m.name.is_empty() {
                return Err("a model has an empty name".into());
            }
            if !seen.insert(m.name.clone()) {
                return Err(format!("model '{}' is listed twice", m.name));
            }
            let engine = m.engine.as_deref().map_or(Engine::Vllm, Engine::parse);
            let endpoints = m
                .endpoints
                .iter()
                .map(|e| {
                    let addr = e.parse().map_err(|_| {
                        format!(
                            "model '{}': endpoint '{e}' is not ip:port (IPv6 as [addr]:port; no host names)",
                            m.name
                        )
                    })?;
                    Ok(EndpointSpec { key: format!("{}/{e}", m.name), addr, engine })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let tokenizer = match m.tokenizer {
                None => None,
                Some(dir) => Some(self.tokenizer(&base.join(dir)).map_err(|e| format!("model '{}': {e}", m.name))?),
            };
            specs.push(ModelSpec { name: m.name, tokenizer, endpoints });
        }
        Ok(specs)
    }

    fn tokenizer(&mut self, dir: &Path) -> Result<Arc<HfTokenizer>, String> {
        if let Some(t) = self.tokenizers.get(dir) {
            return Ok(Arc::clone(t));
        }
        let t = Arc::new(HfTokenizer::from_dir(dir).map_err(|e| e.to_string())?);
        self.tokenizers.insert(dir.to_path_buf(), Arc::clone(&t));
        Ok(t)
    }

    /// Polls until `stop` fires. Runs off the request path; tokenizer loading happens here.
    pub async fn watch(
        mut self,
        registry: Arc<Registry>,
        poll: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => return,
            }
            let reloaded = tokio::task::block_in_place(|| self.load_into(&registry));
            match reloaded {
                Ok(true) => {
                    last_error = None;
                    tracing::info!(path = %self.path.display(), "endpoints file reloaded");
                }
                Ok(false) => {}
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_ref() != Some(&msg) {
                        tracing::error!(error = %msg, "endpoints file not reloaded; keeping the last good state");
                        last_error = Some(msg);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_models_and_rejects_bad_files_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("endpoints.yaml");
        std::fs::write(
            &path,
            "models:\n  - name: a\n    endpoints: [\"127.0.0.1:8001\", \"[::1]:8002\"]\n  - name: b\n",
        )
        .expect("write");
        let reg = Registry::new();
        let mut file = StaticFile::new(path.clone());
        assert!(file.load_into(&reg).expect("loads"));
        let snap = reg.snapshot();
        assert_eq!(snap.models["a"].endpoints.len(), 2);
        assert!(snap.models["b"].endpoints.is_empty());
        assert!(!file.load_into(&reg).expect("unchanged"), "unchanged file is not republished");

        for (body, needle) in [
            ("models:\n  - name: a\n    endpoints: [\"pod-a:80\"]\n", "not ip:port"),
            ("models:\n  - name: a\n  - name: a\n", "listed twice"),
            ("models:\n  - name: a\n    tokenizer: nope\n", "no tokenizer.json"),
            ("models:\n  - name: a\n    endpoint: []\n", "unknown field"),
        ] {
            std::fs::write(&path, body).expect("write");
            let err = file.load_into(&reg).expect_err(body).to_string();
            assert!(err.contains(needle) && err.contains("endpoints.yaml"), "{err}");
        }
        assert_eq!(reg.snapshot().models["a"].endpoints.len(), 2, "last good state kept");
    }
}
