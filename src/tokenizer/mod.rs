//! Request → token ids: the token cache, then the model's vLLM pods (`/tokenize`, when enabled),
//! then the local tokenizer (a configured HF tokenizer with its chat template, or a byte
//! approximation), all behind one trait.

mod cache;
mod cpu;
mod local;
pub mod pool;
pub mod probe;
pub mod remote;

pub use cache::TokenCache;
pub use cpu::{CpuPool, PoolFull};
pub use local::{Limits, LocalTokenizer, PieceCache, Tail};
pub use pool::{PoolConfig, TokenizerPool};

use crate::discovery::Model;
use crate::openai::InferenceRequest;
use futures::future::BoxFuture;
use std::sync::Arc;

/// Where token ids come from. Ids from different spaces never share a prefix hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSpace {
    /// The engine's own tokens: from vLLM `/tokenize`, or token ids the client sent.
    Engine,
    /// A local HF tokenizer, by fingerprint of its files.
    Local(u64),
    /// Fixed bytes per token: no tokenizer at hand.
    Approx,
}

impl TokenSpace {
    pub fn id(self) -> u64 {
        match self {
            TokenSpace::Engine => 0x0e0e,
            TokenSpace::Local(fp) => fp | 1,
            TokenSpace::Approx => 0xa99a,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            TokenSpace::Engine => "engine",
            TokenSpace::Local(_) => "local",
            TokenSpace::Approx => "approx",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub space: TokenSpace,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("no tokenizer for this request")]
    Unavailable,
    #[error("{0}")]
    Failed(String),
    /// The request itself cannot be tokenized as the engine would (its own chat template fails or
    /// exceeds the rendering budget): a client error, not a reason to fall back.
    #[error("{0}")]
    Rejected(String),
}

/// A prompt's leading tokens, and what tokenizes the rest when that was left for later.
#[derive(Debug)]
pub struct Leading {
    /// The whole prompt's tokens when `tail` is `None`; else its first ones, exactly.
    pub tokens: Tokens,
    pub tail: Option<Tail>,
}

/// A way to tokenize a request for routing. Implementations never see the network types of
/// the ext_proc layer.
pub trait Tokenize: Send + Sync {
    fn tokenize<'a>(
        &'a self,
        model: &'a Arc<Model>,
        req: &'a InferenceRequest,
    ) -> BoxFuture<'a, Result<Tokens, TokenizeError>>;

    /// The tokens the routing decision needs now: the whole prompt's, or — where the prompt's
    /// leading pieces are already known and the rest is new text — those pieces' tokens and a
    /// [`Tail`] that tokenizes the rest after the decision.
    fn tokenize_leading<'a>(
        &'a self,
        model: &'a Arc<Model>,
        req: &'a InferenceRequest,
    ) -> BoxFuture<'a, Result<Leading, TokenizeError>> {
        Box::pin(async move { self.tokenize(model, req).await.map(|tokens| Leading { tokens, tail: None }) })
    }
}

/// The router's tokenization: the cache, then the model's vLLM pods (when enabled), then the
/// local tokenizer. Remote trouble never fails a request: it falls back, counted by cause and
/// logged once per cause.
pub struct Tokenization {
    local: LocalTokenizer,
    remote: Option<Arc<TokenizerPool>>,
    cache: Arc<TokenCache>,
    metrics: Arc<crate::metrics::Metrics>,
    logged: std::sync::Mutex<std::collections::HashSet<&'static str>>,
    /// Local tokenizers verified to give the engine's tokens.
    equality: Arc<probe::EngineEquality>,
}

impl Tokenization {
    pub fn new(
        local: LocalTokenizer,
        remote: Option<Arc<TokenizerPool>>,
        cache: Arc<TokenCache>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        if remote.is_some() {
            // Every cause is exported from the start (at 0), so a fallback panel or alert has a
            // series before the first failure instead of "no data".
            for cause in remote::CallError::ALL {
                metrics.tokenize_fallbacks.with_label_values(&[cause.label()]);
            }
        }
        Self { local, remote, cache, metrics, logged: Default::default(), equality: Arc::default() }
    }

    /// Checks each model's local tokenizer against its pods' `/tokenize` (see `probe`), off the
    /// request path, until `stop`.
    pub fn verify_local_tokenizers(
        &self,
        registry: Arc<crate::discovery::Registry>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let local = Arc::new(self.local.clone());
        Arc::clone(&self.equality).follow(registry, local, std::time::Duration::from_secs(30), stop)
    }

    /// The local tokenizers' verdicts (for `/debug/endpoints`).
    pub fn equality(&self) -> Arc<probe::EngineEquality> {
        Arc::clone(&self.equality)
    }

    fn engine_if_equal(&self, model: &Model, mut tokens: Tokens) -> Tokens {
        tokens.space = self.equality.space(&model.name, tokens.space);
        tokens
    }

    fn cached(&self, key: u128) -> Option<Tokens> {
        let hit = self.cache.get(key);
        let label = if hit.is_some() { "hit" } else { "miss" };
        self.metrics.tokenize_cache.with_label_values(&[label]).inc();
        hit.map(|(space, ids)| Tokens { ids: ids.to_vec(), space })
    }

    fn fall_back(&self, cause: &'static str) {
        self.metrics.tokenize_fallbacks.with_label_values(&[cause]).inc();
        let first = self.logged.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(cause);
        if first {
            tracing::warn!(cause, "remote tokenization failed; tokenizing locally (logged once per cause)");
        }
    }

    async fn tokenize_inner(
        &self,
        model: &Arc<Model>,
        req: &InferenceRequest,
        defer: bool,
    ) -> Result<Leading, TokenizeError> {
        let whole = |tokens| Leading { tokens, tail: None };
        let Some(body) = remote::tokenize_body(req) else {
            // Token ids or nothing to tokenize: no call, no cache.
            return self.local.tokenize(model, req).await.map(whole);
        };
        let body = body.to_string().into_bytes();
        if let Some(pool) = &self.remote {
            let key = TokenCache::key("engine", &model.name, &body);
            if let Some(tokens) = self.cached(key) {
                return Ok(whole(tokens));
            }
            match pool.tokenize(model, &body).await {
                Ok(ids) => {
                    self.cache.insert(key, (TokenSpace::Engine, Arc::from(ids.as_slice())));
                    return Ok(whole(Tokens { ids, space: TokenSpace::Engine }));
                }
                Err(failure) => self.fall_back(failure.label()),
            }
        }
        // The local tokenizer's fingerprint is part of the key: a changed tokenizer is new tokens.
        let local_space = format!("{}\0{:016x}", model.name, model.tokenizer.as_ref().map_or(0, |t| t.fingerprint()));
        let key = TokenCache::key("local", &local_space, &body);
        if let Some(tokens) = self.cached(key) {
            return Ok(whole(self.engine_if_equal(model, tokens)));
        }
        let mut leading = if defer {
            self.local.tokenize_leading(model, req).await?
        } else {
            whole(self.local.tokenize(model, req).await?)
        };
        // Only whole prompts are kept; a deferred tail's new pieces go to the piece cache.
        if leading.tail.is_none() {
            self.cache.insert(key, (leading.tokens.space, Arc::from(leading.tokens.ids.as_slice())));
        }
        leading.tokens = self.engine_if_equal(model, leading.tokens);
        Ok(leading)
    }
}

impl Tokenize for Tokenization {
    fn tokenize<'a>(
        &'a self,
        model: &'a Arc<Model>,
        req: &'a InferenceRequest,
    ) -> BoxFuture<'a, Result<Tokens, TokenizeError>> {
        Box::pin(async move { self.tokenize_inner(model, req, false).await.map(|leading| leading.tokens) })
    }

    fn tokenize_leading<'a>(
        &'a self,
        model: &'a Arc<Model>,
        req: &'a InferenceRequest,
    ) -> BoxFuture<'a, Result<Leading, TokenizeError>> {
        Box::pin(self.tokenize_inner(model, req, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::{parse, Endpoint};

    #[tokio::test]
    async fn a_changed_local_tokenizer_is_not_answered_from_the_old_one_s_cache() {
        let metrics = Arc::new(crate::metrics::Metrics::new().expect("metrics"));
        let t = Tokenization::new(LocalTokenizer::new(4, None), None, Arc::new(TokenCache::new(1 << 20)), metrics);
        let req = parse(Endpoint::Completions, br#"{"model":"m","prompt":"Hello world"}"#).expect("parses");
        let qwen = Arc::new(hf_chat::HfTokenizer::from_dir(&crate::test_fixture_dir()).expect("fixture"));
        let with = Arc::new(Model { name: "m".into(), endpoints: vec![], tokenizer: Some(qwen) });
        let without = Arc::new(Model { name: "m".into(), endpoints: vec![], tokenizer: None });
        assert!(matches!(t.tokenize(&with, &req).await.expect("tokens").space, TokenSpace::Local(_)));
        assert_eq!(t.tokenize(&without, &req).await.expect("tokens").space, TokenSpace::Approx);
    }
}
