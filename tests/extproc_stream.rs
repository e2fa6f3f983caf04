//! The real binary's gRPC surface: health on both ports. The ext_proc protocol rules themselves
//! (both body modes, a repeated end-of-stream, trailers, header-only requests, sanitization,
//! errors) are driven in-process by `src/extproc/tests.rs`, and through a real Envoy by
//! `e2e_envoy.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster;
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
