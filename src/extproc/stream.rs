//! One ext_proc stream: reads Envoy's messages in order and dispatches them by phase. Holds the
//! request's in-flight guard, so the count is released when the stream ends (response done,
//! client gone, Envoy reset) or the safety TTL passes.

use super::{mutations, request_body, request_headers, response, Context};
use crate::config::BodyMode;
use crate::routing::Decision;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request::Request, ProcessingRequest, ProcessingResponse,
};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Status, Streaming};

/// How Envoy sends the request body on this stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Whole body in one message (BUFFERED, or BUFFERED_PARTIAL that fit).
    Buffered,
    /// Chunks; we answer only after the last, with the body streamed back.
    FullDuplex,
    /// No body will come (NONE): decide on headers.
    NoBody,
    Unsupported(i32),
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Buffered => "buffered",
            Mode::FullDuplex => "full_duplex",
            Mode::NoBody => "none",
            Mode::Unsupported(_) => "unsupported",
        }
    }
}

/// Per-stream state, passed to each phase handler.
pub struct StreamState {
    pub ctx: Arc<Context>,
    pub mode: Mode,
    pub path: String,
    pub body: Vec<u8>,
    /// The request body is complete (or the request was answered): later request chunks are ignored.
    pub request_done: bool,
    pub decision: Option<Decision>,
    pub guard_deadline: Option<Instant>,
}

impl StreamState {
    pub fn header(&self) -> &str {
        &self.ctx.destination_header
    }

    pub fn hold(&mut self, d: Decision) {
        self.guard_deadline = Some(Instant::now() + self.ctx.inflight_ttl);
        self.decision = Some(d);
    }
}

fn mode_of(ctx: &Context, req: &ProcessingRequest) -> Mode {
    match ctx.body_mode {
        BodyMode::Buffered => return Mode::Buffered,
        BodyMode::FullDuplex => return Mode::FullDuplex,
        BodyMode::Auto => {}
    }
    let Some(pc) = &req.protocol_config else {
        return Mode::Buffered;
    };
    match BodySendMode::try_from(pc.request_body_mode) {
        Ok(BodySendMode::Buffered | BodySendMode::BufferedPartial) => Mode::Buffered,
        Ok(BodySendMode::FullDuplexStreamed) => Mode::FullDuplex,
        Ok(BodySendMode::None) => Mode::NoBody,
        _ => Mode::Unsupported(pc.request_body_mode),
    }
}

pub async fn run(
    ctx: Arc<Context>,
    mut inbound: Streaming<ProcessingRequest>,
    tx: mpsc::Sender<Result<ProcessingResponse, Status>>,
) {
    let mut st = StreamState {
        ctx,
        mode: Mode::Buffered,
        path: String::new(),
        body: Vec::new(),
        request_done: false,
        decision: None,
        guard_deadline: None,
    };
    let mut first = true;
    loop {
        let deadline = st.guard_deadline;
        let next = tokio::select! {
            m = inbound.message() => m,
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                tracing::warn!(ttl = ?st.ctx.inflight_ttl, "in-flight TTL passed; releasing the request's count");
                st.decision = None;
                st.guard_deadline = None;
                continue;
            }
        };
        // None: Envoy closed the stream; Err: it reset it (normal when the HTTP request ends).
        let Ok(Some(msg)) = next else { break };
        if first {
            st.mode = mode_of(&st.ctx, &msg);
            st.ctx.metrics.streams.with_label_values(&[st.mode.label()]).inc();
            first = false;
        }
        let replies = dispatch(&mut st, msg).await;
        for r in replies {
            if tx.send(Ok(r)).await.is_err() {
                return;
            }
        }
    }
}

async fn dispatch(st: &mut StreamState, msg: ProcessingRequest) -> Vec<ProcessingResponse> {
    match msg.request {
        Some(Request::RequestHeaders(h)) => request_headers::handle(st, h),
        Some(Request::RequestBody(b)) => request_body::handle(st, b).await,
        Some(Request::RequestTrailers(_)) => request_body::trailers(st).await,
        Some(Request::ResponseHeaders(_)) => vec![mutations::continue_response_headers()],
        Some(Request::ResponseBody(b)) => response::body(st, b),
        Some(Request::ResponseTrailers(_)) => vec![mutations::continue_trailers(false)],
        None => Vec::new(),
    }
}
