//! InferencePool mode against the API server stand-in (extended to list and watch
//! `inferencepools`): endpoints follow the pool's selector and target ports, a pool edit changes
//! routing within a second, any model name is served by the pool, and the GIE health services
//! answer on the ext_proc port. The router under test is the real binary with a kubeconfig.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::extproc::{connect, decide, destination};
use common::kube_api::{inference_pool, KubeApi};
use common::procs::Proc;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

const NS: &str = "serving";

fn pod(name: &str, app: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "labels": {"app": app}},
        "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

fn router(api: &KubeApi, dir: &std::path::Path, pool: &str) -> Proc {
    let kubeconfig = api.kubeconfig(dir, NS);
    common::cluster::router_with(&["--inference-pool", pool], &[("KUBECONFIG", kubeconfig.to_str().expect("utf-8"))])
}

async fn endpoints(router: &Proc, model: &str) -> Option<BTreeSet<String>> {
    let v: Value = common::client().get(router.url("/debug/endpoints")).send().await.ok()?.json().await.ok()?;
    let m = v["models"].as_array()?.iter().find(|m| m["model"] == model)?;
    Some(m["endpoints"].as_array()?.iter().filter_map(|e| e["address"].as_str().map(str::to_owned)).collect())
}

fn set(addrs: &[&str]) -> Option<BTreeSet<String>> {
    Some(addrs.iter().map(|a| (*a).to_owned()).collect())
}

/// How long until the router's view of `model` is `want` (panics after `within`).
async fn converge(router: &Proc, model: &str, want: Option<BTreeSet<String>>, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if endpoints(router, model).await == want {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "want {want:?} within {within:?}; have {:?}", endpoints(router, model).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn grpc(r: &Proc) -> std::net::SocketAddr {
    common::cluster::grpc_addr(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_the_pool_s_selector_and_ports_and_an_edit_reroutes_within_a_second() {
    let api = KubeApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    api.apply(inference_pool(NS, "llama", json!({"app": "vllm-a"}), &[8000, 8001, 8002]));
    api.apply(pod("a-0", "vllm-a", "10.1.0.1"));
    api.apply(pod("a-1", "vllm-a", "10.1.0.2"));
    api.apply(pod("b-0", "vllm-b", "10.2.0.1"));
    api.apply(pod("other-pool", "vllm-a", "10.1.0.3"));
    api.delete(NS, "other-pool");
    let r = router(&api, dir.path(), "llama");

    // Three target ports: three endpoints per selected pod; the other app's pod is not selected.
    let three: Vec<String> =
        ["10.1.0.1", "10.1.0.2"].iter().flat_map(|ip| (8000..8003).map(move |p| format!("{ip}:{p}"))).collect();
    let three: Vec<&str> = three.iter().map(String::as_str).collect();
    converge(&r, "llama", set(&three), Duration::from_secs(10)).await;

    // Whatever model a request names, the pool serves it.
    let client = connect(grpc(&r)).await;
    for model in ["meta-llama/Llama-3.1-8B-Instruct", "a-lora-adapter"] {
        let body = json!({"model": model, "prompt": "route me within the pool"}).to_string();
        let (_, resp) = decide(&client, "/v1/completions", body.as_bytes()).await;
        let dest = destination(&resp).expect("routed");
        assert!(three.contains(&dest.as_str()), "{model} → {dest}");
    }

    // Edits: the ports, then the selector; each reaches routing within a second.
    api.apply(inference_pool(NS, "llama", json!({"app": "vllm-a"}), &[9000]));
    let took = converge(&r, "llama", set(&["10.1.0.1:9000", "10.1.0.2:9000"]), Duration::from_secs(1)).await;
    eprintln!("target ports edited: routing followed in {took:?}");
    api.apply(inference_pool(NS, "llama", json!({"app": "vllm-b"}), &[9000]));
    let took = converge(&r, "llama", set(&["10.2.0.1:9000"]), Duration::from_secs(1)).await;
    eprintln!("selector edited: routing followed in {took:?}");
    let body = json!({"model": "m", "prompt": "after the edit"}).to_string();
    let (_, resp) = decide(&client, "/v1/completions", body.as_bytes()).await;
    assert_eq!(destination(&resp).as_deref(), Some("10.2.0.1:9000"));

    // Pods of the selected app come and go as before.
    api.apply(pod("b-1", "vllm-b", "10.2.0.2"));
    converge(&r, "llama", set(&["10.2.0.1:9000", "10.2.0.2:9000"]), Duration::from_secs(1)).await;

    // The pool deleted: nothing to route to (503), not a guess.
    api.delete_of("inferencepools", NS, "llama");
    converge(&r, "llama", Some(BTreeSet::new()), Duration::from_secs(1)).await;
    let (_, resp) = decide(&client, "/v1/completions", body.as_bytes()).await;
    assert_eq!(destination(&resp), None);
    assert_eq!(common::extproc::status_of(&resp), Some(503));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gie_health_services_answer_on_the_ext_proc_port() {
    let api = KubeApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = router(&api, dir.path(), "absent");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", grpc(&r)))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    let status = |svc: &str| {
        let mut h = health.clone();
        let svc = svc.to_owned();
        async move { h.check(HealthCheckRequest { service: svc }).await.map(|r| r.into_inner().status).ok() }
    };
    assert_eq!(status("liveness").await, Some(ServingStatus::Serving as i32));
    // A pool that does not exist is a known state (no endpoints): the picker is ready, and says 503.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status("readiness").await != Some(ServingStatus::Serving as i32) {
        assert!(Instant::now() < deadline, "ready once the pool's absence is known");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status("envoy.service.ext_proc.v3.ExternalProcessor").await, Some(ServingStatus::Serving as i32));
    let _ = health.check(HealthCheckRequest { service: String::new() }).await.expect("overall");
}
