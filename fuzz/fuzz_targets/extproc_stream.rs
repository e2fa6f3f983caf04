//! Any sequence of ext_proc messages (kinds, body chunks, end-of-stream flags, trailers, body
//! modes, a client destination header, an inbound error) through the stream state machine: never a
//! panic, never a destination the client chose, and a request whose body phase began always gets a
//! decision or an error before the stream ends.
#![no_main]

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request::Request, processing_response::Response, HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest,
    ProcessingResponse, ProtocolConfiguration,
};
use futures::future::BoxFuture;
use libfuzzer_sys::fuzz_target;
use prefix_router::discovery::{EndpointSpec, Engine, Model, ModelSpec, Registry};
use prefix_router::extproc::{run, BodyMode, Context};
use prefix_router::metrics::Metrics;
use prefix_router::openai::InferenceRequest;
use prefix_router::routing::{PolicyKind, Router};
use prefix_router::tokenizer::{TokenSpace, Tokenize, TokenizeError, Tokens};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

struct Bytes;
impl Tokenize for Bytes {
    fn tokenize<'a>(
        &'a self,
        _: &'a Arc<Model>,
        req: &'a InferenceRequest,
    ) -> BoxFuture<'a, Result<Tokens, TokenizeError>> {
        let ids = req.model.bytes().map(u32::from).collect();
        Box::pin(async move { Ok(Tokens { ids, space: TokenSpace::Engine }) })
    }
}

fn context() -> Arc<Context> {
    static CTX: OnceLock<Arc<Context>> = OnceLock::new();
    Arc::clone(CTX.get_or_init(|| {
        let registry = Arc::new(Registry::new());
        registry.publish(vec![ModelSpec {
            name: "m".into(),
            tokenizer: None,
            endpoints: vec![EndpointSpec {
                key: "m/a".into(),
                addr: "10.0.0.1:8000".parse().unwrap_or_else(|_| unreachable!()),
                engine: Engine::Vllm,
            }],
        }]);
        let metrics = Arc::new(Metrics::new().unwrap_or_else(|_| unreachable!()));
        // The router's own defaults, small enough to fill: tiny blocks and index, receipts kept.
        let mut cfg = prefix_router::config::Config::default_routing().unwrap_or_else(|_| unreachable!());
        cfg.policy = PolicyKind::Prefix;
        cfg.block_size = 4;
        cfg.index_blocks_per_pod = 1024;
        cfg.pending_ttl = Duration::from_secs(3);
        cfg.receipts = 16;
        let router = Arc::new(Router::new(registry, Arc::new(Bytes), cfg, Arc::clone(&metrics)));
        Arc::new(Context {
            router,
            metrics,
            body_mode: BodyMode::Auto,
            max_body_bytes: 4096,
            destination_header: "x-gateway-destination-endpoint".into(),
            inflight_ttl: Duration::from_secs(60),
            receipt_header: Some("x-prefix-router-receipt".into()),
        })
    }))
}

fn headers(eos: bool, mode: i32, spoof: bool) -> ProcessingRequest {
    let mut hs = vec![(":path", "/v1/completions".to_owned())];
    if spoof {
        hs.push(("x-gateway-destination-endpoint", "6.6.6.6:1".to_owned()));
    }
    ProcessingRequest {
        protocol_config: Some(ProtocolConfiguration {
            request_body_mode: mode,
            response_body_mode: mode,
            ..Default::default()
        }),
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: hs
                    .into_iter()
                    .map(|(k, v)| HeaderValue { key: k.into(), raw_value: v.into_bytes(), ..Default::default() })
                    .collect(),
            }),
            end_of_stream: eos,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn destination(r: &ProcessingResponse) -> Option<Vec<u8>> {
    let common = match &r.response {
        Some(Response::RequestHeaders(h)) => h.response.as_ref(),
        Some(Response::RequestBody(b)) => b.response.as_ref(),
        _ => None,
    }?;
    let set = common.header_mutation.as_ref()?.set_headers.first()?;
    Some(set.header.as_ref()?.raw_value.clone())
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let mode = i32::from(first % 5);
    let mut msgs: Vec<Result<ProcessingRequest, tonic::Status>> =
        vec![Ok(headers(first & 0x80 != 0, mode, first & 0x40 != 0))];
    let mut body_started = false;
    for c in rest.chunks(64) {
        let (&tag, payload) = match c.split_first() {
            Some(x) => x,
            None => break,
        };
        let msg = match tag % 6 {
            0 | 1 => {
                body_started = true;
                Request::RequestBody(HttpBody {
                    body: payload.to_vec(),
                    end_of_stream: tag & 0x10 != 0,
                    ..Default::default()
                })
            }
            2 => Request::RequestTrailers(HttpTrailers::default()),
            3 => Request::ResponseHeaders(HttpHeaders::default()),
            4 => Request::ResponseBody(HttpBody {
                body: payload.to_vec(),
                end_of_stream: tag & 0x10 != 0,
                ..Default::default()
            }),
            _ => {
                msgs.push(Err(tonic::Status::internal("fuzzed stream error")));
                break;
            }
        };
        msgs.push(Ok(ProcessingRequest { request: Some(msg), ..Default::default() }));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap_or_else(|_| unreachable!());
    let out: Vec<ProcessingResponse> = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        run(context(), futures::stream::iter(msgs), tx).await;
        let mut out = Vec::new();
        while let Ok(Ok(r)) = rx.try_recv() {
            out.push(r);
        }
        out
    });
    for r in &out {
        assert_ne!(destination(r).as_deref(), Some(&b"6.6.6.6:1"[..]), "a client-chosen destination");
    }
    if body_started {
        let answered =
            out.iter().any(|r| destination(r).is_some() || matches!(r.response, Some(Response::ImmediateResponse(_))));
        assert!(answered, "a request whose body began got neither a decision nor an error: {out:?}");
    }
});
