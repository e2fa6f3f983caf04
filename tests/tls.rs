//! TLS on the ext_proc port: a real Envoy with a TLS transport socket (as Envoy Gateway's
//! InferencePool wiring opens to its picker) routes through a router serving a self-signed
//! certificate; a mounted certificate is the one served; plaintext stays what it was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::client;
use common::cluster::{grpc_addr, router, Cluster, Mode, Options};
use serde_json::json;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// The example bootstrap's ext_proc cluster, speaking TLS (no verification: Envoy AI Gateway does
/// not verify its picker's certificate either).
fn tls_to_router(yaml: String) -> String {
    let at = "  - name: prefix_router\n    type: STATIC\n";
    assert!(yaml.contains(at), "the example's ext_proc cluster");
    yaml.replace(
        at,
        &format!(
            "{at}    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \
             \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n        \
             common_tls_context: {{alpn_protocols: [h2]}}\n"
        ),
    )
}

async fn chat(cluster: &Cluster) -> reqwest::Response {
    let body = json!({"model": "tiny-chat", "max_tokens": 2, "messages": [{"role": "user", "content": "over TLS?"}]});
    client().post(cluster.envoy.url("/v1/chat/completions")).json(&body).send().await.expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_with_a_tls_transport_socket_routes_through_a_self_signed_router_and_plaintext_cannot() {
    for mode in Mode::ALL {
        let tls = Cluster::start(
            mode,
            Options { router_args: &["--grpc-tls"], envoy_edit: tls_to_router, ..Options::default() },
        );
        for _ in 0..3 {
            let res = chat(&tls).await;
            assert_eq!(res.status(), 200, "{mode:?}: routed over TLS");
            assert!(res.headers().contains_key("x-sim-id"));
        }
        let m = tls.router_metrics().await;
        assert!(
            common::metric_where(&m, "prefix_router_decisions_total", "tiny-chat") >= 3.0,
            "{mode:?}: the router decided"
        );
        // The same TLS router behind a plaintext Envoy: the ext_proc call fails, and so (fail closed) does the request.
        let plain = Cluster::start(mode, Options { router_args: &["--grpc-tls"], ..Options::default() });
        assert_eq!(chat(&plain).await.status(), 500, "{mode:?}: TLS is really on");
    }
}

#[tokio::test]
async fn a_mounted_certificate_is_the_one_served() {
    let made = rcgen::generate_simple_self_signed(vec!["prefix-router.example".to_owned()]).expect("certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, made.cert.pem()).expect("write");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write");
    let endpoints = dir.path().join("endpoints.yaml");
    std::fs::write(&endpoints, "models:\n  - name: m\n    endpoints: [\"127.0.0.1:1\"]\n").expect("write");
    let r = router(
        &endpoints,
        &["--grpc-tls-cert-file", cert.to_str().expect("utf-8"), "--grpc-tls-key-file", key.to_str().expect("utf-8")],
    );
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(made.cert.pem()))
        .domain_name("prefix-router.example");
    let channel = Endpoint::from_shared(format!("https://{}", grpc_addr(&r)))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("a client trusting only the mounted certificate connects");
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest { service: "liveness".into() })
        .await
        .expect("health over TLS")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}
