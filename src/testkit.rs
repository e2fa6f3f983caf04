//! In-process fixtures for unit tests: a registry of fake pods, a scripted `Tokenize`, and a
//! `Router` + ext_proc `Context` built from them, so routing and the stream state machine run in
//! milliseconds without Envoy, sims or sockets.

use crate::discovery::{EndpointSpec, Engine, ModelSpec, Registry};
use crate::extproc::{BodyMode, Context};
use crate::metrics::Metrics;
use crate::openai::{InferenceRequest, Kind, Prompt};
use crate::routing::{PolicyKind, Router, RoutingConfig};
use crate::tokenizer::{TokenSpace, Tokenize, TokenizeError, Tokens};
use futures::future::BoxFuture;
use prefix_index::policy::PrefixParams;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Tokens are the prompt's bytes (engine space); a prompt containing `FAIL` fails to tokenize.
#[derive(Default)]
pub(crate) struct FakeTokenizer {
    pub(crate) calls: AtomicUsize,
    /// Runs on every call, before the tokens are returned (e.g. discovery changing mid-request).
    pub(crate) on_call: std::sync::Mutex<Option<Box<dyn Fn() + Send>>>,
}

impl Tokenize for FakeTokenizer {
    fn tokenize<'a>(
        &'a self,
        _model: &'a Arc<crate::discovery::Model>,
        req: &'a InferenceRequest,
    ) -> BoxFuture<'a, Result<Tokens, TokenizeError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = self.on_call.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            hook();
        }
        let text = match &req.kind {
            Kind::Completion(Prompt::Text(t)) => t.clone(),
            Kind::Completion(Prompt::Ids(ids)) => {
                return Box::pin(async move { Ok(Tokens { ids: ids.clone(), space: TokenSpace::Engine }) })
            }
            Kind::Chat(c) => format!("{:?}", c.messages),
            _ => String::new(),
        };
        Box::pin(async move {
            if text.contains("FAIL") {
                return Err(TokenizeError::Failed("scripted failure".into()));
            }
            Ok(Tokens { ids: text.bytes().map(u32::from).collect(), space: TokenSpace::Engine })
        })
    }
}

/// `model` served by pods on 10.0.0.1..=n, port 8000.
pub(crate) fn spec(model: &str, pods: u8) -> ModelSpec {
    ModelSpec {
        name: model.into(),
        tokenizer: None,
        endpoints: (1..=pods)
            .map(|i| {
                let addr = format!("10.0.0.{i}:8000").parse().unwrap_or_else(|_| unreachable!());
                EndpointSpec { key: format!("{model}/{addr}"), addr, engine: Engine::Vllm }
            })
            .collect(),
    }
}

pub(crate) fn routing_config() -> RoutingConfig {
    RoutingConfig {
        policy: PolicyKind::Prefix,
        params: PrefixParams { prefix_weight: 1.0, load_weight: 1.0, balance_abs: 8, balance_rel: 1.5 },
        placement: crate::routing::Placement::Rendezvous,
        block_size: 4,
        index_blocks_per_pod: 1024,
        fallbacks: 0,
        max_inflight_per_pod: 0,
        trust_request_chat_template: false,
        pending_ttl: std::time::Duration::from_secs(3),
        receipts: 256,
    }
}

pub(crate) struct Kit {
    pub(crate) registry: Arc<Registry>,
    pub(crate) tokenizer: Arc<FakeTokenizer>,
    pub(crate) router: Arc<Router>,
    pub(crate) metrics: Arc<Metrics>,
}

/// A router over `specs` (published, so synced) with the fake tokenizer.
pub(crate) fn kit(specs: Vec<ModelSpec>, cfg: RoutingConfig) -> Kit {
    let registry = Arc::new(Registry::new());
    registry.publish(specs);
    let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")));
    let tokenizer = Arc::new(FakeTokenizer::default());
    let router = Arc::new(Router::new(
        Arc::clone(&registry),
        Arc::clone(&tokenizer) as Arc<dyn Tokenize>,
        cfg,
        Arc::clone(&metrics),
    ));
    Kit { registry, tokenizer, router, metrics }
}

impl Kit {
    pub(crate) fn context(&self, body_mode: BodyMode, max_body_bytes: usize) -> Arc<Context> {
        Arc::new(Context {
            router: Arc::clone(&self.router),
            metrics: Arc::clone(&self.metrics),
            body_mode,
            max_body_bytes,
            destination_header: "x-gateway-destination-endpoint".into(),
            inflight_ttl: Duration::from_secs(60),
            receipt_header: Some("x-route-receipt".into()),
        })
    }
}

pub(crate) fn completion(model: &str, prompt: &str) -> InferenceRequest {
    InferenceRequest {
        model: model.into(),
        kind: Kind::Completion(Prompt::Text(prompt.into())),
        cache_salt: None,
        stream: false,
    }
}
