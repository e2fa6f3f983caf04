//! Request-body phase: gather the body (FULL_DUPLEX chunks or one BUFFERED message), enforce the
//! size limit, parse, route, and answer in the mode's own shape.

use super::errors::Reject;
use super::mutations;
use super::state::{reject, Mode, StreamState};
use crate::openai::{self, Endpoint};
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, ProcessingResponse};
use std::time::Instant;

pub(super) async fn handle(st: &mut StreamState, b: HttpBody) -> Vec<ProcessingResponse> {
    if st.request_done {
        // Envoy can repeat an end-of-stream chunk on large bodies; the request is decided.
        return Vec::new();
    }
    if st.body.len() + b.body.len() > st.ctx.max_body_bytes {
        st.request_done = true;
        st.body = Vec::new();
        return reject(st, Reject::BodyTooLarge { limit: st.ctx.max_body_bytes });
    }
    if st.body.is_empty() {
        st.body = b.body;
    } else {
        st.body.extend_from_slice(&b.body);
    }
    match st.mode {
        Mode::FullDuplex if !b.end_of_stream => Vec::new(),
        Mode::Buffered if !b.end_of_stream && st.partial => {
            // BUFFERED_PARTIAL cut the body at Envoy's buffer limit: we cannot see all of it.
            st.request_done = true;
            reject(st, Reject::BodyTooLarge { limit: st.body.len() })
        }
        // BUFFERED with trailers: the whole body comes without end-of-stream, the trailers end it.
        Mode::Buffered if !b.end_of_stream => Vec::new(),
        _ => finish(st, true).await,
    }
}

/// A request with trailers: they end the body instead of a body end-of-stream (both modes).
pub(super) async fn trailers(st: &mut StreamState) -> Vec<ProcessingResponse> {
    if st.request_done {
        return vec![mutations::continue_trailers(true)];
    }
    let mut out = finish(st, false).await;
    // The body's answer (the decision) comes first, then the trailers' own; an error ends it all.
    if st.decision.is_some() {
        out.push(mutations::continue_trailers(true));
    }
    out
}

async fn finish(st: &mut StreamState, body_ended: bool) -> Vec<ProcessingResponse> {
    st.request_done = true;
    let started = Instant::now();
    let endpoint = openai::endpoint_of(&st.path);
    let parsed = openai::parse(endpoint, &st.body);
    st.ctx.metrics.observe_phase(crate::metrics::Phase::Parse, started.elapsed());
    let routed = match (endpoint, parsed) {
        (_, Ok(req)) => st.ctx.router.route_within(&req, st.subset.as_deref()).await.map_err(Reject::from),
        // Other paths without a usable model still go somewhere on load.
        (Endpoint::Other, Err(_)) => st.ctx.router.route_anywhere(st.subset.as_deref()).map_err(Reject::from),
        (_, Err(e)) => Err(Reject::from(e)),
    };
    let decision = match routed {
        Ok(d) => d,
        Err(r) => return reject(st, r),
    };
    let value = decision.destination();
    st.hold(decision);
    match st.mode {
        Mode::FullDuplex => {
            let mut out = vec![mutations::request_headers(st.header(), Some(&value))];
            out.extend(mutations::streamed_body(&std::mem::take(&mut st.body), body_ended, true));
            out
        }
        _ => {
            st.body = Vec::new();
            vec![mutations::buffered_body(st.header(), &value)]
        }
    }
}
