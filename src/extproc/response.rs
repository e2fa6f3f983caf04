//! Response phases: nothing to change. In FULL_DUPLEX a response body sent to us must be handed
//! back chunk by chunk; otherwise each message gets an empty answer.

use super::mutations;
use super::state::{Mode, StreamState};
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, ProcessingResponse};

pub(super) fn body(st: &mut StreamState, b: HttpBody) -> Vec<ProcessingResponse> {
    if st.mode == Mode::FullDuplex {
        mutations::streamed_body(&b.body, b.end_of_stream, false)
    } else {
        vec![mutations::continue_body(false)]
    }
}
