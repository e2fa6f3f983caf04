//! Response phases. Response headers carry what the proxy knows of the upstream: its own 503 (it
//! could not reach the pod) and the served-endpoint report (GIE's `envoy.lb` metadata, or the
//! `<destination header>-served` header the example bootstraps add, which is removed here so
//! clients never see pod addresses). A response body sent in FULL_DUPLEX_STREAMED (Envoy's response
//! mode, which need not be the request's) is handed back chunk by chunk; otherwise each message
//! gets an empty answer.

use super::mutations::{self, METADATA_KEY};
use super::state::StreamState;
use crate::discovery::health::Ejection;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use std::net::SocketAddr;

/// Envoy adds this to responses that came from the upstream; its own local replies lack it.
const UPSTREAM_TIME: &str = "x-envoy-upstream-service-time";

pub(super) fn headers(st: &mut StreamState, h: &HttpHeaders, meta: Option<&Metadata>) -> Vec<ProcessingResponse> {
    let served_header = format!("{}-served", st.header());
    let (mut status, mut from_upstream, mut served) = (None, false, None);
    for hv in h.headers.iter().flat_map(|m| m.headers.iter()) {
        let value = if hv.raw_value.is_empty() { hv.value.as_bytes() } else { &hv.raw_value[..] };
        match hv.key.as_str() {
            ":status" => status = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u16>().ok()),
            UPSTREAM_TIME => from_upstream = true,
            k if k == served_header => served = parse_addr(value),
            _ => {}
        }
    }
    let served = served_metadata(meta).or(served);
    if let Some(d) = &mut st.decision {
        // A 503 that Envoy made itself for a routed request: it could not reach the pod.
        if status == Some(503) && !from_upstream {
            d.endpoints[0].eject(Ejection::UpstreamUnreachable, &st.ctx.metrics);
        } else if let Some(addr) = served.filter(|_| from_upstream) {
            st.ctx.router.served(d, addr);
        }
    }
    let receipt = match (&st.ctx.receipt_header, &st.decision) {
        (Some(name), Some(d)) if st.receipt_wanted => {
            d.receipt.as_ref().and_then(|r| serde_json::to_string(&**r).ok()).map(|json| (name.as_str(), json))
        }
        _ => None,
    };
    vec![mutations::continue_response_headers(&served_header, receipt.as_ref().map(|(k, v)| (*k, v.as_str())))]
}

pub(super) fn body(st: &mut StreamState, b: HttpBody) -> Vec<ProcessingResponse> {
    if st.response_streamed {
        mutations::streamed_body(&b.body, b.end_of_stream, false)
    } else {
        vec![mutations::continue_body(false)]
    }
}

/// `filter_metadata["envoy.lb"]["x-gateway-destination-endpoint-served"]` (GIE, DESIGN §8).
fn served_metadata(meta: Option<&Metadata>) -> Option<SocketAddr> {
    let lb = meta?.filter_metadata.get("envoy.lb")?;
    match lb.fields.get(&format!("{METADATA_KEY}-served"))?.kind.as_ref()? {
        Kind::StringValue(s) => parse_addr(s.as_bytes()),
        _ => None,
    }
}

fn parse_addr(v: &[u8]) -> Option<SocketAddr> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}
