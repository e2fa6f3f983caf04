//! Whether a model's local tokenizer gives the engine's own tokens. Checked once per model and
//! tokenizer fingerprint against a vLLM pod's `/tokenize` on fixed probes — a completion text and a
//! chat with a system prompt, so both the tokenizer and the chat template are compared. Until it
//! agrees (and if it never does) local tokens keep their own space; once it does they are engine
//! tokens, in the hash space of KV events and remote tokenization.

use super::{remote, LocalTokenizer, TokenSpace};
use crate::discovery::{Engine, Model, Registry};
use crate::openai::{self, Endpoint};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Probe requests: ASCII, Unicode, digits, whitespace runs, and a chat with a system turn.
const PROBES: &[(Endpoint, &str)] = &[
    (
        Endpoint::Completions,
        r#"{"model":"","prompt":"Probe: KV-cache blocks, 16 tokens each — naïve café, 東京, 12345.67,\n\ttabs  and   spaces! 🙂"}"#,
    ),
    (
        Endpoint::ChatCompletions,
        r#"{"model":"","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Why reuse a prefix? Answer in 1 line."},{"role":"assistant","content":"It skips prefill."},{"role":"user","content":"And 東京?"}]}"#,
    ),
];

/// Verdicts by (model, tokenizer fingerprint): `true` once a pod's `/tokenize` agreed on every probe.
#[derive(Default)]
pub struct EngineEquality {
    verdicts: RwLock<HashMap<(String, u64), bool>>,
}

impl EngineEquality {
    /// `space`, as engine tokens when it is this model's verified local tokenizer.
    pub fn space(&self, model: &str, space: TokenSpace) -> TokenSpace {
        let TokenSpace::Local(fp) = space else { return space };
        let verdicts = self.verdicts.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if verdicts.get(&(model.to_owned(), fp)) == Some(&true) {
            TokenSpace::Engine
        } else {
            space
        }
    }

    /// The verdict on `model`'s tokenizer with fingerprint `fp`, `None` while undecided.
    pub fn verdict(&self, model: &str, fp: u64) -> Option<bool> {
        self.verdicts.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&(model.to_owned(), fp)).copied()
    }

    fn decided(&self, model: &str, fp: u64) -> bool {
        self.verdict(model, fp).is_some()
    }

    /// Probes one vLLM pod of `model`: `None` when no pod could be asked (try again later).
    async fn probe(&self, http: &reqwest::Client, local: &LocalTokenizer, model: &Arc<Model>) -> Option<bool> {
        let fp = model.tokenizer.as_ref()?.fingerprint();
        let mut probes = Vec::new();
        for (endpoint, body) in PROBES {
            let mut json: serde_json::Value = serde_json::from_str(body).ok()?;
            json["model"] = serde_json::Value::String(model.name.clone());
            let req = openai::parse(*endpoint, json.to_string().as_bytes()).ok()?;
            let mine = local.tokenize_now(model, &req).ok()?;
            probes.push((remote::tokenize_body(&req)?.to_string().into_bytes(), mine));
        }
        'pods: for pod in model.endpoints.iter().filter(|e| e.engine == Engine::Vllm && e.is_routable()) {
            let url = remote::endpoint_url("http://{ip}:{port}", pod.addr);
            for (body, mine) in &probes {
                match remote::call(http, &url, body, Duration::from_secs(2)).await {
                    Ok(theirs) if mine.space == TokenSpace::Local(fp) && mine.ids == theirs => {}
                    Ok(_) => return Some(false),
                    // This pod could not answer: ask the next.
                    Err(_) => continue 'pods,
                }
            }
            return Some(true);
        }
        None
    }

    /// Probes each model with a local tokenizer not yet decided, on every discovery change and
    /// every `retry` until decided, until `stop`.
    pub async fn follow(
        self: Arc<Self>,
        registry: Arc<Registry>,
        local: Arc<LocalTokenizer>,
        retry: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let Ok(http) = reqwest::Client::builder().tcp_nodelay(true).build() else { return };
        let mut changes = registry.subscribe();
        loop {
            let snapshot = registry.snapshot();
            for model in snapshot.models.values() {
                let Some(tok) = &model.tokenizer else { continue };
                if self.decided(&model.name, tok.fingerprint()) {
                    continue;
                }
                let Some(agrees) = self.probe(&http, &local, model).await else { continue };
                if agrees {
                    tracing::info!(model = %model.name, "the local tokenizer gives the engine's tokens: local tokens route as engine tokens (KV events match them)");
                } else {
                    tracing::warn!(model = %model.name, "the local tokenizer differs from the engine's /tokenize: its tokens keep their own space (no KV-event matches)");
                }
                self.verdicts
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert((model.name.clone(), tok.fingerprint()), agrees);
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(retry) => {}
                _ = stop.changed() => return,
            }
        }
    }
}
