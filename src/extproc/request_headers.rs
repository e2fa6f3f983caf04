//! Request-headers phase: remember the path; decide at once when no body will follow; otherwise
//! BUFFERED answers now (removing any client-sent destination header) and FULL_DUPLEX waits for
//! the body.

use super::errors::Reject;
use super::mutations;
use super::state::{reject, Mode, StreamState};
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingResponse};

pub(super) fn handle(st: &mut StreamState, h: HttpHeaders) -> Vec<ProcessingResponse> {
    let mut content_length: Option<usize> = None;
    for hv in h.headers.iter().flat_map(|m| m.headers.iter()) {
        // Envoy sends values in raw_value; older versions used value.
        let value = if hv.raw_value.is_empty() { hv.value.as_bytes() } else { &hv.raw_value[..] };
        match hv.key.as_str() {
            ":path" => st.path = String::from_utf8_lossy(value).into_owned(),
            "content-length" => content_length = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse().ok()),
            k if st.ctx.receipt_header.as_deref() == Some(k) => {
                st.receipt_wanted = matches!(value, b"1" | b"true");
            }
            _ => {}
        }
    }
    if let Mode::Unsupported(m) = st.mode {
        st.request_done = true;
        return reject(st, Reject::UnsupportedMode(m));
    }
    if content_length.is_some_and(|n| n > st.ctx.max_body_bytes) {
        st.request_done = true;
        return reject(st, Reject::BodyTooLarge { limit: st.ctx.max_body_bytes });
    }
    if st.mode == Mode::NoBody && !h.end_of_stream && st.ctx.router.model_count() > 1 {
        // A body follows that we will never see: which model it names is unknowable.
        st.request_done = true;
        return reject(st, Reject::BodyNotSent);
    }
    if h.end_of_stream || st.mode == Mode::NoBody {
        st.request_done = true;
        return match st.ctx.router.route_anywhere(st.subset.as_deref()) {
            Ok(d) => {
                let value = d.destination();
                st.hold(d);
                vec![mutations::request_headers(st.header(), Some(&value))]
            }
            Err(e) => reject(st, e.into()),
        };
    }
    match st.mode {
        Mode::FullDuplex => Vec::new(),
        _ => vec![mutations::request_headers(st.header(), None)],
    }
}
