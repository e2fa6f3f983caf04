//! Response phases: nothing to change. A response body sent in FULL_DUPLEX_STREAMED (Envoy's
//! response mode, which need not be the request's) is handed back chunk by chunk; otherwise each
//! message gets an empty answer.

use super::mutations;
use super::state::StreamState;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, ProcessingResponse};

pub(super) fn body(st: &mut StreamState, b: HttpBody) -> Vec<ProcessingResponse> {
    if st.response_streamed {
        mutations::streamed_body(&b.body, b.end_of_stream, false)
    } else {
        vec![mutations::continue_body(false)]
    }
}
