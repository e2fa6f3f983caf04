//! The static endpoints file as an operator edits it: changes take effect without a restart, a
//! removed pod gets no more requests and its metrics vanish, a bad edit keeps the last good state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::extproc::{body, destination, exchange, headers};
use common::{cluster, metric_where};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use std::time::Duration;

async fn route(grpc: std::net::SocketAddr, prompt: &str) -> String {
    let payload = serde_json::json!({"model": "tiny-chat", "prompt": prompt}).to_string();
    let out = exchange(
        grpc,
        vec![headers("/v1/completions", false, BodySendMode::FullDuplexStreamed, &[]), body(payload.as_bytes(), true)],
    )
    .await;
    destination(&out[0]).expect("routed")
}

async fn metrics(router: &common::procs::Proc) -> String {
    common::client().get(router.url("/metrics")).send().await.expect("metrics").text().await.expect("text")
}

#[tokio::test]
async fn edits_take_effect_and_removed_pods_are_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("endpoints.yaml");
    let (a, b) = ("127.0.0.1:7001", "127.0.0.1:7002");
    let write = |eps: &[&str]| {
        let list: Vec<String> = eps.iter().map(|e| format!("\"{e}\"")).collect();
        std::fs::write(&file, format!("models:\n  - name: tiny-chat\n    endpoints: [{}]\n", list.join(", ")))
            .expect("write");
    };
    write(&[a, b]);
    let router = cluster::router(&file, &[]);
    let grpc = cluster::grpc_addr(&router);
    let prompt = "a shared prefix that is long enough to fill several blocks of the index ".repeat(4);
    let first = route(grpc, &prompt).await;
    assert_eq!(route(grpc, &prompt).await, first, "a repeated prompt sticks");
    let m = metrics(&router).await;
    assert_eq!(metric_where(&m, "prefix_router_endpoints", "tiny-chat"), 2.0);
    assert!(metric_where(&m, "prefix_router_index_blocks", &format!("upstream=\"{first}\"")) > 0.0);

    // Remove the pod that holds the prefix.
    let other = if first == a { b } else { a };
    write(&[other]);
    let mut seen = 0.0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = metric_where(&metrics(&router).await, "prefix_router_endpoints", "tiny-chat");
        if seen == 1.0 {
            break;
        }
    }
    assert_eq!(seen, 1.0, "the edit was picked up");
    for _ in 0..5 {
        assert_eq!(route(grpc, &prompt).await, other, "no request goes to a removed pod");
    }
    let m = metrics(&router).await;
    assert!(!m.contains(&format!("upstream=\"{first}\"")), "a removed pod's series vanish:\n{m}");

    // A broken edit is refused; the last good state keeps routing.
    std::fs::write(&file, "models: [this is not: valid").expect("write");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(route(grpc, "anything at all").await, other);
    let status = common::client().get(router.url("/readyz")).send().await.expect("readyz").status();
    assert_eq!(status, 200);
}

#[test]
fn a_bad_file_at_start_up_stops_the_router_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, "models:\n  - name: m\n    endpoints: [\"not-an-address\"]\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prefix-router"))
        .args(["--host", "127.0.0.1", "--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", "0"])
        .arg("--endpoints-file")
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.yaml") && err.contains("not-an-address"), "{err}");
}
