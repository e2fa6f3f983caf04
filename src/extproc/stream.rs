//! One ext_proc stream: reads Envoy's messages in order and dispatches them by phase. Holds the
//! request's in-flight guard, so the count is released when the stream ends (response done,
//! client gone, Envoy reset — tonic drops the answers, and the state with them) or the safety TTL
//! passes.

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

/// One stream's answers, worked out as they are polled: `inbound` is what Envoy sends (tonic's
/// `Streaming`, or any stream of messages in tests). The service hands this to tonic as the
/// response stream, so each message is answered in the task that writes the answer, with no task
/// or channel in between. The request's state — its in-flight guard included — lives as long as
/// the stream: until Envoy closes or resets it, or the safety TTL releases the guard.
pub(super) fn replies<S>(ctx: Arc<Context>, inbound: S) -> impl Stream<Item = Result<ProcessingResponse, Status>> + Send
where
    S: Stream<Item = Result<ProcessingRequest, Status>> + Unpin + Send,
{
    struct Replies<S> {
        st: StreamState,
        inbound: S,
        first: bool,
        queued: std::collections::VecDeque<ProcessingResponse>,
        ended: bool,
    }
    let start = Replies { st: StreamState::new(ctx), inbound, first: true, queued: Default::default(), ended: false };
    futures::stream::unfold(start, |mut r| async move {
        loop {
            if let Some(reply) = r.queued.pop_front() {
                return Some((Ok(reply), r));
            }
            if r.ended {
                return None;
            }
            let deadline = r.st.guard_deadline;
            let next = tokio::select! {
                m = r.inbound.next() => m.transpose(),
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                    tracing::warn!(ttl = ?r.st.ctx.inflight_ttl, "in-flight TTL passed; releasing the request's count");
                    r.st.decision = None;
                    r.st.guard_deadline = None;
                    continue;
                }
            };
            let msg = match next {
                Ok(Some(msg)) => msg,
                // Envoy closed or reset the stream (normal once the HTTP request is over). A request
                // not yet decided is answered anyway: a stream that ends without a decision reads to
                // Envoy as "continue unmodified", which would send the request on unrouted.
                end => {
                    r.ended = true;
                    let reject = match end {
                        Err(status) => Reject::from_stream_error(&status, r.st.ctx.max_body_bytes),
                        Ok(_) => Reject::Incomplete,
                    };
                    if !r.st.request_done {
                        r.st.request_done = true;
                        tracing::debug!(%reject, "ext_proc stream ended before a decision");
                        r.queued.extend(reject_now(&r.st, reject));
                    }
                    continue;
                }
            };
            if r.first {
                let modes = modes_of(&r.st.ctx, &msg);
                (r.st.mode, r.st.partial, r.st.response_streamed) =
                    (modes.request, modes.partial, modes.response_streamed);
                r.st.subset = subset_of(&msg);
                r.st.ctx.metrics.streams.with_label_values(&[r.st.mode.label()]).inc();
                r.first = false;
            }
            r.queued.extend(dispatch(&mut r.st, msg).await);
        }
    })
}

/// Runs one stream to its end, sending each answer on `tx` (tests drive streams this way).
pub async fn run<S>(ctx: Arc<Context>, inbound: S, tx: mpsc::Sender<Result<ProcessingResponse, Status>>)
where
    S: Stream<Item = Result<ProcessingRequest, Status>> + Unpin + Send,
{
    let mut answers = std::pin::pin!(replies(ctx, inbound));
    while let Some(reply) = answers.next().await {
        if tx.send(reply).await.is_err() {
            return;
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
