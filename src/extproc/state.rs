//! What one ext_proc stream carries between phases, what every stream shares, and the one way a
//! phase answers with an error. The leaf of the module: phases and the stream loop build on it.

use super::errors::Reject;
use crate::metrics::Metrics;
use crate::routing::{Decision, Router};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How the router expects Envoy to send request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BodyMode {
    /// Work it out from Envoy's `protocol_config` (BUFFERED when Envoy does not say).
    Auto,
    Buffered,
    FullDuplex,
}

/// What every stream shares.
pub struct Context {
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub body_mode: BodyMode,
    pub max_body_bytes: usize,
    pub destination_header: String,
    pub inflight_ttl: Duration,
    /// Request header (lowercase) asking for the route receipt back; `None`: not offered.
    pub receipt_header: Option<String>,
}

/// How Envoy sends the request body on this stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Whole body in one message (BUFFERED, or BUFFERED_PARTIAL that fit).
    Buffered,
    /// Chunks; we answer only after the last, with the body streamed back.
    FullDuplex,
    /// No body will come (NONE): decide on headers.
    NoBody,
    Unsupported(i32),
}

impl Mode {
    pub(super) fn label(self) -> &'static str {
        match self {
            Mode::Buffered => "buffered",
            Mode::FullDuplex => "full_duplex",
            Mode::NoBody => "none",
            Mode::Unsupported(_) => "unsupported",
        }
    }
}

/// Per-stream state, passed to each phase handler.
pub(super) struct StreamState {
    pub(super) ctx: Arc<Context>,
    pub(super) mode: Mode,
    pub(super) partial: bool,
    pub(super) response_streamed: bool,
    pub(super) path: String,
    pub(super) body: Vec<u8>,
    /// The request body is complete (or the request was answered): later request chunks are ignored.
    pub(super) request_done: bool,
    pub(super) decision: Option<Decision>,
    pub(super) guard_deadline: Option<Instant>,
    /// The client asked for the route receipt (and the operator allows it).
    pub(super) receipt_wanted: bool,
    /// The proxy's subset hint (GIE): only these pods may be chosen.
    pub(super) subset: Option<Vec<std::net::SocketAddr>>,
}

impl StreamState {
    pub(super) fn header(&self) -> &str {
        &self.ctx.destination_header
    }

    pub(super) fn hold(&mut self, d: Decision) {
        self.guard_deadline = Some(Instant::now() + self.ctx.inflight_ttl);
        self.decision = Some(d);
    }
}

/// How Envoy sends this stream's bodies, from its `protocol_config` (the first message carries it)
/// or, for the request body, the configured mode.
pub(super) struct Modes {
    pub(super) request: Mode,
    /// BUFFERED_PARTIAL: a body without end-of-stream was cut at Envoy's buffer limit (rather than
    /// followed by trailers).
    pub(super) partial: bool,
    /// The response body comes in FULL_DUPLEX_STREAMED chunks, each to be handed back.
    pub(super) response_streamed: bool,
}

pub(super) fn modes_of(ctx: &Context, req: &ProcessingRequest) -> Modes {
    let pc = req.protocol_config.as_ref();
    let request_mode = pc.map(|pc| BodySendMode::try_from(pc.request_body_mode));
    let partial = matches!(request_mode, Some(Ok(BodySendMode::BufferedPartial)));
    let response_streamed =
        pc.is_some_and(|pc| BodySendMode::try_from(pc.response_body_mode) == Ok(BodySendMode::FullDuplexStreamed));
    let request = match (ctx.body_mode, request_mode) {
        (BodyMode::Buffered, _) | (BodyMode::Auto, None) => Mode::Buffered,
        (BodyMode::FullDuplex, _) => Mode::FullDuplex,
        (BodyMode::Auto, Some(m)) => match m {
            Ok(BodySendMode::Buffered | BodySendMode::BufferedPartial) => Mode::Buffered,
            Ok(BodySendMode::FullDuplexStreamed) => Mode::FullDuplex,
            Ok(BodySendMode::None) => Mode::NoBody,
            _ => Mode::Unsupported(pc.map_or(0, |pc| pc.request_body_mode)),
        },
    };
    Modes { request, partial, response_streamed }
}

impl StreamState {
    pub(super) fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            mode: Mode::Buffered,
            partial: false,
            response_streamed: false,
            path: String::new(),
            body: Vec::new(),
            request_done: false,
            decision: None,
            guard_deadline: None,
            receipt_wanted: false,
            subset: None,
        }
    }
}

/// Answers the request with an error (counted; logged at debug, without the prompt).
pub(super) fn reject(st: &StreamState, r: Reject) -> Vec<ProcessingResponse> {
    st.ctx.metrics.rejections.with_label_values(&[&r.status().to_string()]).inc();
    tracing::debug!(status = r.status(), reason = %r, "request answered by the router");
    vec![r.to_response()]
}

/// `metadata_context.filter_metadata["envoy.lb.subset_hint"]["x-gateway-destination-endpoint-subset"]`:
/// the `ip:port`s the proxy allows (DESIGN §8). Present but empty (or unreadable) means none.
pub(super) fn subset_of(req: &ProcessingRequest) -> Option<Vec<std::net::SocketAddr>> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let hint = req.metadata_context.as_ref()?.filter_metadata.get("envoy.lb.subset_hint")?;
    let list = match hint.fields.get(&format!("{}-subset", super::mutations::METADATA_KEY))?.kind.as_ref()? {
        Kind::ListValue(l) => l.values.iter().collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    Some(
        list.into_iter()
            .filter_map(|v| match v.kind.as_ref()? {
                Kind::StringValue(s) => s.trim().parse().ok(),
                _ => None,
            })
            .collect(),
    )
}
