//! Response phases: nothing to change. A response body sent in FULL_DUPLEX_STREAMED (Envoy's
//! response mode, which need not be the request's) is handed back chunk by chunk; otherwise each
//! message gets an empty answer.

use super::mutations;
use super::state::StreamState;
use crate::discovery::health::Ejection;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingResponse};

/// Envoy adds this to responses that came from the upstream; its own local replies lack it.
const UPSTREAM_TIME: &str = "x-envoy-upstream-service-time";

/// A 503 that Envoy made itself for a routed request means it could not reach the pod (refused,
/// reset, no route to it): the pod leaves routing at once, before discovery notices.
pub(super) fn headers(st: &mut StreamState, h: &HttpHeaders) -> Vec<ProcessingResponse> {
    let (mut status, mut from_upstream) = (None, false);
    for hv in h.headers.iter().flat_map(|m| m.headers.iter()) {
        let value = if hv.raw_value.is_empty() { hv.value.as_bytes() } else { &hv.raw_value[..] };
        match hv.key.as_str() {
            ":status" => status = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u16>().ok()),
            UPSTREAM_TIME => from_upstream = true,
            _ => {}
        }
    }
    if status == Some(503) && !from_upstream {
        if let Some(d) = &st.decision {
            d.endpoints[0].eject(Ejection::UpstreamUnreachable, &st.ctx.metrics);
        }
    }
    vec![mutations::continue_response_headers()]
}

pub(super) fn body(st: &mut StreamState, b: HttpBody) -> Vec<ProcessingResponse> {
    if st.response_streamed {
        mutations::streamed_body(&b.body, b.end_of_stream, false)
    } else {
        vec![mutations::continue_body(false)]
    }
}
