//! One ext_proc stream: reads Envoy's messages in order and dispatches them by phase. Holds the
//! request's in-flight guard, so the count is released when the stream ends (response done,
//! client gone, Envoy reset) or the safety TTL passes.

use super::errors::Reject;
use super::state::{modes_of, reject as reject_now, subset_of, Context, StreamState};
use super::{mutations, request_body, request_headers, response};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request::Request, ProcessingRequest, ProcessingResponse,
};
use futures::{Stream, StreamExt};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;

/// Runs one stream to its end: `inbound` is what Envoy sends (tonic's `Streaming`, or any stream
/// of messages in tests), `tx` carries the answers back.
pub async fn run<S>(ctx: Arc<Context>, mut inbound: S, tx: mpsc::Sender<Result<ProcessingResponse, Status>>)
where
    S: Stream<Item = Result<ProcessingRequest, Status>> + Unpin + Send,
{
    let mut st = StreamState::new(ctx);
    let mut first = true;
    loop {
        let deadline = st.guard_deadline;
        let next = tokio::select! {
            m = inbound.next() => m.transpose(),
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                tracing::warn!(ttl = ?st.ctx.inflight_ttl, "in-flight TTL passed; releasing the request's count");
                st.decision = None;
                st.guard_deadline = None;
                continue;
            }
        };
        let msg = match next {
            Ok(Some(msg)) => msg,
            // Envoy closed or reset the stream (normal once the HTTP request is over). A request not
            // yet decided is answered anyway: a stream that ends without a decision reads to Envoy
            // as "continue unmodified", which would send the request on unrouted.
            end => {
                let reject = match end {
                    Err(status) => Reject::from_stream_error(&status, st.ctx.max_body_bytes),
                    Ok(_) => Reject::Incomplete,
                };
                if !st.request_done {
                    st.request_done = true;
                    tracing::debug!(%reject, "ext_proc stream ended before a decision");
                    for r in reject_now(&st, reject) {
                        let _ = tx.send(Ok(r)).await;
                    }
                }
                break;
            }
        };
        if first {
            let modes = modes_of(&st.ctx, &msg);
            (st.mode, st.partial, st.response_streamed) = (modes.request, modes.partial, modes.response_streamed);
            st.subset = subset_of(&msg);
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
        Some(Request::ResponseHeaders(h)) => response::headers(st, &h, msg.metadata_context.as_ref()),
        Some(Request::ResponseBody(b)) => response::body(st, b),
        Some(Request::ResponseTrailers(_)) => vec![mutations::continue_trailers(false)],
        None => Vec::new(),
    }
}
