//! Building the ext_proc messages that carry a decision: the destination header (value in
//! `raw_value`: Envoy ignores `value` for ORIGINAL_DST), `envoy.lb` dynamic metadata, route-cache
//! clearing, and FULL_DUPLEX body chunks.

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, processing_response::Response, BodyMutation, BodyResponse, CommonResponse, HeaderMutation,
    HeadersResponse, ProcessingResponse, StreamedBodyResponse, TrailersResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

/// Largest body chunk sent back in FULL_DUPLEX_STREAMED mode.
pub const MAX_CHUNK: usize = 62_000;
/// The metadata key the Gateway API Inference Extension defines under `envoy.lb`.
pub const METADATA_KEY: &str = "x-gateway-destination-endpoint";

/// Sets the destination header (overwriting any the client sent) or, with `None`, only removes a
/// client-supplied one.
pub(super) fn destination(header: &str, value: Option<&str>) -> HeaderMutation {
    match value {
        Some(v) => HeaderMutation {
            set_headers: vec![HeaderValueOption {
                header: Some(HeaderValue {
                    key: header.to_owned(),
                    raw_value: v.as_bytes().to_vec(),
                    ..Default::default()
                }),
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                ..Default::default()
            }],
            ..Default::default()
        },
        None => HeaderMutation { remove_headers: vec![header.to_owned()], ..Default::default() },
    }
}

fn lb_metadata(value: &str) -> Struct {
    let inner = Struct {
        fields: [(METADATA_KEY.to_owned(), Value { kind: Some(Kind::StringValue(value.to_owned())) })].into(),
    };
    Struct { fields: [("envoy.lb".to_owned(), Value { kind: Some(Kind::StructValue(inner)) })].into() }
}

fn routed(header: &str, value: &str) -> CommonResponse {
    CommonResponse {
        header_mutation: Some(destination(header, Some(value))),
        clear_route_cache: true,
        ..Default::default()
    }
}

/// A request-headers response: the decision (with metadata) or, with `None`, sanitization only.
pub(super) fn request_headers(header: &str, value: Option<&str>) -> ProcessingResponse {
    let response = match value {
        Some(v) => routed(header, v),
        None => CommonResponse { header_mutation: Some(destination(header, None)), ..Default::default() },
    };
    ProcessingResponse {
        response: Some(Response::RequestHeaders(HeadersResponse { response: Some(response) })),
        dynamic_metadata: value.map(lb_metadata),
        ..Default::default()
    }
}

/// BUFFERED: the decision rides on the request-body response.
pub(super) fn buffered_body(header: &str, value: &str) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestBody(BodyResponse { response: Some(routed(header, value)) })),
        dynamic_metadata: Some(lb_metadata(value)),
        ..Default::default()
    }
}

/// FULL_DUPLEX_STREAMED: the body handed back in chunks of at most [`MAX_CHUNK`] bytes,
/// `end_of_stream` on the last one only if the body ended the request (not trailers).
pub(super) fn streamed_body(body: &[u8], end_of_stream: bool, request: bool) -> Vec<ProcessingResponse> {
    let chunk = |bytes: &[u8], last: bool| {
        let body = BodyResponse {
            response: Some(CommonResponse {
                body_mutation: Some(BodyMutation {
                    mutation: Some(Mutation::StreamedResponse(StreamedBodyResponse {
                        body: bytes.to_vec(),
                        end_of_stream: last && end_of_stream,
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
        };
        let response = if request { Response::RequestBody(body) } else { Response::ResponseBody(body) };
        ProcessingResponse { response: Some(response), ..Default::default() }
    };
    if body.is_empty() {
        return vec![chunk(&[], true)];
    }
    let n = body.len().div_ceil(MAX_CHUNK);
    body.chunks(MAX_CHUNK).enumerate().map(|(i, c)| chunk(c, i + 1 == n)).collect()
}

/// Response headers go on, without `remove` (a header only the proxy and the router should see)
/// and with `add` (the route receipt) when given.
pub(super) fn continue_response_headers(remove: &str, add: Option<(&str, &str)>) -> ProcessingResponse {
    let set_headers = add
        .map(|(k, v)| HeaderValueOption {
            header: Some(HeaderValue { key: k.to_owned(), raw_value: v.as_bytes().to_vec(), ..Default::default() }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        })
        .into_iter()
        .collect();
    let mutation = HeaderMutation { set_headers, remove_headers: vec![remove.to_owned()] };
    let response = CommonResponse { header_mutation: Some(mutation), ..Default::default() };
    ProcessingResponse {
        response: Some(Response::ResponseHeaders(HeadersResponse { response: Some(response) })),
        ..Default::default()
    }
}

pub(super) fn continue_body(request: bool) -> ProcessingResponse {
    let body = BodyResponse::default();
    let response = if request { Response::RequestBody(body) } else { Response::ResponseBody(body) };
    ProcessingResponse { response: Some(response), ..Default::default() }
}

pub(super) fn continue_trailers(request: bool) -> ProcessingResponse {
    let t = TrailersResponse::default();
    let response = if request { Response::RequestTrailers(t) } else { Response::ResponseTrailers(t) };
    ProcessingResponse { response: Some(response), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn chunks_are_at_most_62000_bytes_and_only_the_last_ends_the_stream() {
        let body = vec![7u8; 150_000];
        let chunks = streamed_body(&body, true, true);
        let parts: Vec<(usize, bool)> = chunks
            .iter()
            .map(|r| match &r.response {
                Some(Response::RequestBody(BodyResponse { response: Some(c) })) => match &c.body_mutation {
                    Some(BodyMutation { mutation: Some(Mutation::StreamedResponse(s)) }) => {
                        (s.body.len(), s.end_of_stream)
                    }
                    _ => panic!("streamed"),
                },
                _ => panic!("body"),
            })
            .collect();
        assert_eq!(parts, vec![(62_000, false), (62_000, false), (26_000, true)]);
    }

    /// Golden bytes: a dependency bump that changes the wire shows up here. The decode below
    /// shows what the bytes say.
    #[test]
    fn decision_wire_bytes_are_stable() {
        let msg = request_headers("x-gateway-destination-endpoint", Some("10.0.0.1:8000"));
        let bytes = msg.encode_to_vec();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN);

        let back = ProcessingResponse::decode(bytes.as_slice()).expect("decodes");
        let Some(Response::RequestHeaders(HeadersResponse { response: Some(common) })) = back.response else {
            panic!("headers response")
        };
        assert!(common.clear_route_cache);
        let set = &common.header_mutation.expect("mutation").set_headers[0];
        let header = set.header.as_ref().expect("header");
        assert_eq!(
            (header.key.as_str(), header.raw_value.as_slice(), header.value.as_str()),
            ("x-gateway-destination-endpoint", b"10.0.0.1:8000".as_slice(), "")
        );
        assert_eq!(set.append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
        let lb = &back.dynamic_metadata.expect("metadata").fields["envoy.lb"];
        let Some(Kind::StructValue(inner)) = &lb.kind else { panic!("struct") };
        assert_eq!(inner.fields[METADATA_KEY].kind, Some(Kind::StringValue("10.0.0.1:8000".into())));
    }

    const GOLDEN: &str = "0a3b0a3912350a330a2f0a1e782d676174657761792d64657374696e6174696f6e2d656e64706f696e741a0d31302e302e302e313a383030301802280142430a410a08656e766f792e6c6212352a330a310a1e782d676174657761792d64657374696e6174696f6e2d656e64706f696e74120f1a0d31302e302e302e313a38303030";
}
