//! A client that speaks ext_proc to the router the way Envoy does.

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, processing_request::Request, processing_response::Response, HttpBody, HttpHeaders,
    ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
};
use std::time::Duration;

pub(crate) fn headers(
    path: &str,
    end_of_stream: bool,
    mode: BodySendMode,
    extra: &[(&str, &str)],
) -> ProcessingRequest {
    let mut hs = vec![(":method", "POST"), (":path", path)];
    hs.extend_from_slice(extra);
    ProcessingRequest {
        protocol_config: Some(ProtocolConfiguration { request_body_mode: mode as i32, ..Default::default() }),
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: hs
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: (*k).into(),
                        raw_value: v.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub(crate) fn body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::RequestBody(HttpBody { body: bytes.to_vec(), end_of_stream, ..Default::default() })),
        ..Default::default()
    }
}

/// Sends `msgs`, then collects every response that arrives within a short quiet period.
pub(crate) async fn exchange(grpc: std::net::SocketAddr, msgs: Vec<ProcessingRequest>) -> Vec<ProcessingResponse> {
    let mut client = ExternalProcessorClient::connect(format!("http://{grpc}")).await.expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut inbound =
        client.process(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("stream").into_inner();
    for m in msgs {
        tx.send(m).await.expect("send");
    }
    let mut out = Vec::new();
    while let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_millis(500), inbound.message()).await {
        out.push(r);
    }
    out
}

pub(crate) fn destination(r: &ProcessingResponse) -> Option<String> {
    let common = match &r.response {
        Some(Response::RequestHeaders(h)) => h.response.as_ref(),
        Some(Response::RequestBody(b)) => b.response.as_ref(),
        _ => None,
    }?;
    let set = common.header_mutation.as_ref()?.set_headers.first()?;
    let h = set.header.as_ref()?;
    (h.key == "x-gateway-destination-endpoint").then(|| String::from_utf8_lossy(&h.raw_value).into_owned())
}

/// The HTTP status of an answer the router gave itself (`ImmediateResponse`).
pub(crate) fn status_of(r: &ProcessingResponse) -> Option<i32> {
    match &r.response {
        Some(Response::ImmediateResponse(ir)) => ir.status.as_ref().map(|s| s.code),
        _ => None,
    }
}

pub(crate) fn streamed(r: &ProcessingResponse) -> Option<(usize, bool)> {
    let Some(Response::RequestBody(b)) = &r.response else {
        return None;
    };
    match b.response.as_ref()?.body_mutation.as_ref()?.mutation.as_ref()? {
        Mutation::StreamedResponse(s) => Some((s.body.len(), s.end_of_stream)),
        _ => None,
    }
}

pub(crate) type Client = ExternalProcessorClient<tonic::transport::Channel>;

pub(crate) async fn connect(grpc: std::net::SocketAddr) -> Client {
    ExternalProcessorClient::connect(format!("http://{grpc}")).await.expect("connect")
}

/// One FULL_DUPLEX decision: headers + whole body, timed until the first answer (the decision).
pub(crate) async fn decide(client: &Client, path: &str, body_bytes: &[u8]) -> (Duration, ProcessingResponse) {
    let mut client = client.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(headers(path, false, BodySendMode::FullDuplexStreamed, &[])).await.expect("send");
    tx.send(body(body_bytes, true)).await.expect("send");
    let started = std::time::Instant::now();
    let mut inbound =
        client.process(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("stream").into_inner();
    let first = inbound.message().await.expect("answer").expect("a response");
    (started.elapsed(), first)
}
