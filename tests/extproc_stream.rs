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

/// Peak resident memory (`VmHWM`) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
    kib.expect("VmHWM") * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_6_mb_prompts_stay_under_1_gib_and_small_requests_are_routed_meanwhile() {
    use common::extproc::{decide, destination};
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("endpoints.yaml");
    // No pod is contacted: the decision is all this test needs, with the real tokenizer.
    std::fs::write(
        &file,
        format!(
            "models:\n  - name: tiny-chat\n    tokenizer: {}\n    endpoints: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n",
            common::fixture_dir().display()
        ),
    )
    .expect("write");
    let proc = cluster::router(&file, &[]);
    let grpc = cluster::grpc_addr(&proc);
    let pid = proc.child.id();
    let big = |k: usize| {
        let mut text = format!("document {k}: ");
        while text.len() < 6 << 20 {
            text.push_str(&format!("line {} of a very long pasted log, with numbers {} and words. ", text.len(), k));
        }
        serde_json::json!({"model": "tiny-chat", "prompt": text, "max_tokens": 1}).to_string().into_bytes()
    };
    let bigs: Vec<_> = (0..16)
        .map(|k| {
            let body = big(k);
            tokio::spawn(async move {
                let client = common::extproc::connect(grpc).await;
                destination(&decide(&client, "/v1/completions", &body).await.1)
            })
        })
        .collect();
    let client = common::extproc::connect(grpc).await;
    let mut small = 0;
    while bigs.iter().any(|b| !b.is_finished()) {
        let body = serde_json::json!({"model": "tiny-chat", "messages": [{"role": "user", "content": format!("small {small}")}]});
        let (_, resp) = decide(&client, "/v1/chat/completions", body.to_string().as_bytes()).await;
        assert!(destination(&resp).is_some(), "small request {small} routed beside the large ones");
        small += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for b in bigs {
        assert!(b.await.expect("task").is_some(), "every 6 MB prompt is routed (on its leading part)");
    }
    let peak = peak_rss(pid);
    eprintln!("16 × 6 MB prompts: router peak RSS {} MiB; {small} small requests routed meanwhile", peak >> 20);
    assert!(peak < 1 << 30, "peak RSS {} MiB", peak >> 20);
    assert!(small > 0);
}
