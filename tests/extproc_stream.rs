//! The ext_proc protocol rules, driven by a gRPC client that speaks to the router as Envoy does:
//! FULL_DUPLEX_STREAMED ordering, the repeated end-of-stream, trailers ending a body, header-only
//! requests, sanitization in BUFFERED, and gRPC health on both ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster;
use common::extproc::{body, destination, exchange, headers, streamed};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request::Request, processing_response::Response, HttpTrailers, ProcessingRequest,
};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

struct Router {
    _sims: Vec<common::procs::Proc>,
    proc: common::procs::Proc,
    grpc: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

fn start() -> Router {
    let sims: Vec<_> = (0..2).map(|_| common::procs::sim(&[])).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("endpoints.yaml");
    let eps: Vec<String> = sims.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    std::fs::write(&file, format!("models:\n  - name: tiny-chat\n    endpoints: [{}]\n", eps.join(", ")))
        .expect("write");
    let proc = cluster::router(&file, &[]);
    let grpc = cluster::grpc_addr(&proc);
    Router { _sims: sims, proc, grpc, _dir: dir }
}

#[tokio::test]
async fn full_duplex_answers_after_the_body_and_ignores_a_repeated_end_of_stream() {
    let r = start();
    let payload = serde_json::json!({"model": "tiny-chat", "prompt": "x".repeat(100_000)}).to_string().into_bytes();
    let (a, b) = payload.split_at(70_000);
    let out = exchange(
        r.grpc,
        vec![
            headers("/v1/completions", false, BodySendMode::FullDuplexStreamed, &[]),
            body(a, false),
            body(b, true),
            body(b"", true), // Envoy can repeat the end-of-stream chunk on large bodies.
        ],
    )
    .await;
    assert!(matches!(out[0].response, Some(Response::RequestHeaders(_))), "headers response first");
    let dest = destination(&out[0]).expect("destination header");
    assert!(out[0].dynamic_metadata.is_some(), "envoy.lb metadata");
    let chunks: Vec<(usize, bool)> = out[1..].iter().map(|m| streamed(m).expect("streamed body")).collect();
    assert_eq!(chunks.iter().map(|c| c.0).sum::<usize>(), payload.len());
    assert!(chunks.iter().all(|c| c.0 <= 62_000));
    assert_eq!(chunks.iter().filter(|c| c.1).count(), 1, "end_of_stream once, on the last: {chunks:?}");
    assert!(chunks.last().is_some_and(|c| c.1));
    assert!(dest.starts_with("127.0.0.1:"));
}

#[tokio::test]
async fn trailers_end_a_full_duplex_body_and_get_their_own_answer() {
    let r = start();
    let payload = serde_json::json!({"model": "tiny-chat", "prompt": "hello"}).to_string().into_bytes();
    let trailers =
        ProcessingRequest { request: Some(Request::RequestTrailers(HttpTrailers::default())), ..Default::default() };
    let out = exchange(
        r.grpc,
        vec![headers("/v1/completions", false, BodySendMode::FullDuplexStreamed, &[]), body(&payload, false), trailers],
    )
    .await;
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(destination(&out[0]).is_some());
    assert_eq!(streamed(&out[1]), Some((payload.len(), false)), "the body does not end the stream; trailers do");
    assert!(matches!(out[2].response, Some(Response::RequestTrailers(_))));
}

#[tokio::test]
async fn header_only_requests_are_routed_at_once_and_buffered_mode_strips_a_client_destination() {
    let r = start();
    let out = exchange(r.grpc, vec![headers("/v1/models", true, BodySendMode::FullDuplexStreamed, &[])]).await;
    assert_eq!(out.len(), 1);
    assert!(destination(&out[0]).is_some(), "a bodiless request is decided on its headers");

    let spoof = [("x-gateway-destination-endpoint", "127.0.0.1:1")];
    let out = exchange(r.grpc, vec![headers("/v1/completions", false, BodySendMode::Buffered, &spoof)]).await;
    let Some(Response::RequestHeaders(h)) = &out[0].response else { panic!("headers response") };
    let removed = &h.response.as_ref().and_then(|c| c.header_mutation.as_ref()).expect("mutation").remove_headers;
    assert_eq!(removed, &vec!["x-gateway-destination-endpoint".to_owned()]);

    let out = exchange(r.grpc, vec![headers("/v1/completions", false, BodySendMode::Streamed, &[])]).await;
    let Some(Response::ImmediateResponse(ir)) = &out[0].response else { panic!("STREAMED is refused clearly") };
    assert_eq!(ir.status.as_ref().map(|s| s.code), Some(500));
}

#[tokio::test]
async fn grpc_health_serves_on_both_ports() {
    let r = start();
    let health_port: std::net::SocketAddr = r
        .proc
        .line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("health="))
        .and_then(|a| a.parse().ok())
        .expect("health address");
    for addr in [r.grpc, health_port] {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).expect("uri");
        let mut client = HealthClient::new(channel.connect().await.expect("connect"));
        for service in ["", "liveness", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor"] {
            let res = client.check(HealthCheckRequest { service: service.into() }).await.expect("check");
            assert_eq!(res.into_inner().status(), ServingStatus::Serving, "{addr} {service:?}");
        }
    }
    let ready = common::client().get(r.proc.url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200);
}
