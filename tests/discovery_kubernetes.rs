//! The pod informer against an API server stand-in that speaks list/watch: what routing sees as
//! pods come, go, flip readiness, terminate and change IP; the API server away and back; readiness
//! before the first sync. The router under test is the real binary with a kubeconfig.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster;
use common::extproc::{connect, decide, destination};
use common::kube_api::{pod, KubeApi};
use common::procs::Proc;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// (when a decision started, where it went)
type DecisionLog = Vec<(Instant, Option<String>)>;

fn router(api: &KubeApi, dir: &std::path::Path) -> Proc {
    router_with(&api.kubeconfig(dir, "models"))
}

fn router_with(kubeconfig: &std::path::Path) -> Proc {
    router_args(kubeconfig, &[])
}

fn router_args(kubeconfig: &std::path::Path, extra: &[&str]) -> Proc {
    let mut args = vec!["--kubernetes", "true"];
    args.extend_from_slice(extra);
    cluster::router_with(&args, &[("KUBECONFIG", kubeconfig.to_str().expect("utf-8"))])
}

async fn endpoints(router: &Proc, model: &str) -> Option<BTreeSet<String>> {
    let v: serde_json::Value =
        common::client().get(router.url("/debug/endpoints")).send().await.ok()?.json().await.ok()?;
    let m = v["models"].as_array()?.iter().find(|m| m["model"] == model)?;
    Some(m["endpoints"].as_array()?.iter().filter_map(|e| e["address"].as_str().map(str::to_owned)).collect())
}

fn set(addrs: &[&str]) -> Option<BTreeSet<String>> {
    Some(addrs.iter().map(|a| format!("{a}:8000")).collect())
}

/// Waits until the router's view equals `want`; returns how long it took (panics after 1 s).
async fn converge(router: &Proc, want: Option<BTreeSet<String>>, what: &str, within: Duration) -> (Duration, Instant) {
    let t0 = Instant::now();
    loop {
        if endpoints(router, "m").await == want {
            let result = (t0.elapsed(), Instant::now());
            // Let decisions run on the new state before the next change.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return result;
        }
        assert!(
            t0.elapsed() < within,
            "{what}: not routable-correct within {within:?}; have {:?}",
            endpoints(router, "m").await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn ready(router: &Proc) -> u16 {
    common::client().get(router.url("/readyz")).send().await.map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_changes_reach_routing_within_a_second_and_no_request_goes_to_a_gone_pod() {
    let api = KubeApi::start().await;
    api.apply(pod("models", "p1", "m", Some("127.0.0.11"), true));
    api.apply(pod("models", "p2", "m", Some("127.0.0.12"), true));
    api.apply(pod("models", "p3", "m", Some("127.0.0.13"), false));
    api.apply(pod("elsewhere", "x1", "m", Some("127.0.0.99"), true)); // another namespace
    let mut unlabeled = pod("models", "x2", "m", Some("127.0.0.98"), true);
    unlabeled["metadata"]["labels"] = serde_json::json!({"app": "web"});
    api.apply(unlabeled);
    let dir = tempfile::tempdir().expect("tempdir");
    let r = router(&api, dir.path());
    let t0 = Instant::now();
    while ready(&r).await != 200 {
        assert!(t0.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(endpoints(&r, "m").await, set(&["127.0.0.11", "127.0.0.12"]));

    // Decisions run all along; each is recorded with when it started.
    let ext = connect(cluster::grpc_addr(&r)).await;
    let log: Arc<Mutex<DecisionLog>> = Arc::default();
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = {
        let (ext, log, running) = (ext.clone(), Arc::clone(&log), Arc::clone(&running));
        tokio::spawn(async move {
            let mut i = 0u64;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let body = serde_json::json!({"model": "m", "prompt": format!("request {i}")}).to_string();
                let started = Instant::now();
                let (_, first) = decide(&ext, "/v1/completions", body.as_bytes()).await;
                log.lock().expect("log").push((started, destination(&first)));
                i += 1;
            }
        })
    };

    let mut removed: Vec<(String, Instant)> = Vec::new();
    let mut timings = Vec::new();
    let second = Duration::from_secs(1);
    api.apply(pod("models", "p3", "m", Some("127.0.0.13"), true));
    timings.push(converge(&r, set(&["127.0.0.11", "127.0.0.12", "127.0.0.13"]), "becomes ready", second).await.0);
    api.apply(pod("models", "p1", "m", Some("127.0.0.11"), false));
    let (t, at) = converge(&r, set(&["127.0.0.12", "127.0.0.13"]), "becomes unready", second).await;
    timings.push(t);
    removed.push(("127.0.0.11:8000".into(), at));
    let mut terminating = pod("models", "p2", "m", Some("127.0.0.12"), true);
    terminating["metadata"]["deletionTimestamp"] = "2026-11-25T00:00:00Z".into();
    api.apply(terminating);
    let (t, at) = converge(&r, set(&["127.0.0.13"]), "terminating", second).await;
    timings.push(t);
    removed.push(("127.0.0.12:8000".into(), at));
    api.apply(pod("models", "p3", "m", Some("127.0.0.23"), true));
    let (t, at) = converge(&r, set(&["127.0.0.23"]), "changes IP", second).await;
    timings.push(t);
    removed.push(("127.0.0.13:8000".into(), at));
    api.apply(pod("models", "p4", "m", Some("127.0.0.14"), true));
    timings.push(converge(&r, set(&["127.0.0.23", "127.0.0.14"]), "appears", second).await.0);
    api.delete("models", "p4");
    let (t, at) = converge(&r, set(&["127.0.0.23"]), "deleted", second).await;
    timings.push(t);
    removed.push(("127.0.0.14:8000".into(), at));
    api.delete("models", "p3");
    timings.push(converge(&r, Some(BTreeSet::new()), "last pod deleted", second).await.0);
    eprintln!("watch event → routing change: {timings:?}");

    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = load.await;
    let log = log.lock().expect("log");
    assert!(log.len() > 50, "decisions ran throughout ({})", log.len());
    for (addr, gone_at) in &removed {
        let late: Vec<_> = log.iter().filter(|(started, d)| started > gone_at && d.as_deref() == Some(addr)).collect();
        assert!(late.is_empty(), "{} decisions sent to {addr} after it stopped being routable", late.len());
    }
    assert!(log.iter().any(|(_, d)| d.as_deref() == Some("127.0.0.14:8000")), "the new pod was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_continues_while_the_api_server_is_away_and_converges_when_it_returns() {
    let mut api = KubeApi::start().await;
    api.apply(pod("models", "a", "m", Some("127.0.0.31"), true));
    api.apply(pod("models", "b", "m", Some("127.0.0.32"), true));
    let dir = tempfile::tempdir().expect("tempdir");
    let r = router(&api, dir.path());
    converge(&r, set(&["127.0.0.31", "127.0.0.32"]), "initial sync", Duration::from_secs(10)).await;
    let lists_before = api.lists();
    let ext = connect(cluster::grpc_addr(&r)).await;

    api.stop();
    // Changes made while the router cannot see them; history compacted, so its watch gets 410.
    api.apply(pod("models", "c", "m", Some("127.0.0.33"), true));
    api.delete("models", "a");
    api.compact();
    let away = Instant::now();
    let mut routed = 0;
    while away.elapsed() < Duration::from_secs(10) {
        let body = serde_json::json!({"model": "m", "prompt": format!("while away {routed}")}).to_string();
        let (_, first) = decide(&ext, "/v1/completions", body.as_bytes()).await;
        let dest = destination(&first).expect("still routed while the API server is away");
        assert!(dest == "127.0.0.31:8000" || dest == "127.0.0.32:8000", "{dest}");
        routed += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready(&r).await, 200, "still ready on the last known pods");

    api.restart().await;
    let (t, _) =
        converge(&r, set(&["127.0.0.32", "127.0.0.33"]), "converged after return", Duration::from_secs(8)).await;
    eprintln!("converged {t:?} after the API server returned ({routed} decisions while away)");
    assert!(api.lists() > lists_before, "relisted after 410 Gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_first_full_sync() {
    let mut api = KubeApi::start().await;
    api.apply(pod("models", "a", "m", Some("127.0.0.41"), true));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.kubeconfig(dir.path(), "models");
    api.stop();
    let r = router_with(&kubeconfig);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ready(&r).await, 503);
    let ext = connect(cluster::grpc_addr(&r)).await;
    let (_, first) = decide(&ext, "/v1/completions", br#"{"model":"m","prompt":"early"}"#).await;
    let Some(envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response::ImmediateResponse(ir)) =
        first.response
    else {
        panic!("an early request is answered, not routed")
    };
    assert_eq!(ir.status.map(|s| s.code), Some(503));

    api.restart().await;
    let t0 = Instant::now();
    while ready(&r).await != 200 {
        assert!(t0.elapsed() < Duration::from_secs(8), "ready after the API server came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, first) = decide(&ext, "/v1/completions", br#"{"model":"m","prompt":"now"}"#).await;
    assert_eq!(destination(&first).as_deref(), Some("127.0.0.41:8000"));
}

/// (token space, tokens) the router would route this completion on.
async fn tokens_for(router: &Proc, model: &str) -> (String, serde_json::Value) {
    let url = router.url("/debug/tokenize?path=/v1/completions");
    let v = common::post_json(&url, &serde_json::json!({"model": model, "prompt": "Hello world"})).await;
    (v["space"].as_str().unwrap_or("").to_owned(), v["tokens"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovered_model_with_a_tokenizer_directory_hashes_its_exact_tokens() {
    let api = KubeApi::start().await;
    api.apply(pod("models", "p1", "m", Some("127.0.0.11"), true));
    let dir = tempfile::tempdir().expect("tempdir");
    let tokenizers = dir.path().join("tokenizers");
    std::fs::create_dir_all(&tokenizers).expect("dir");
    std::os::unix::fs::symlink(common::fixture_dir(), tokenizers.join("m")).expect("link the model's tokenizer");
    let with =
        router_args(&api.kubeconfig(dir.path(), "models"), &["--tokenizers-dir", tokenizers.to_str().expect("utf-8")]);
    let without = router(&api, dir.path());
    for r in [&with, &without] {
        converge(r, set(&["127.0.0.11"]), "the pod", Duration::from_secs(5)).await;
    }
    assert_eq!(tokens_for(&with, "m").await, ("local".into(), serde_json::json!([9707, 1879])), "Qwen3's own tokens");
    assert_eq!(tokens_for(&without, "m").await.0, "approx", "no directory: the byte approximation");
}
