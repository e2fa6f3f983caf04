//! Tokenizing through vLLM pods: exact engine tokens, failover, hung pods, fallback, and the
//! pool's lifecycle — observed the way an operator would, through ext_proc, Envoy and /metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{self, Cluster, Mode, Options};
use common::extproc::{connect, decide, destination};
use common::{client, metric, metric_where, procs};
use serde_json::{json, Value};
use std::time::Duration;

const REMOTE: [&str; 4] =
    ["--enable-vllm-remote-tokenizer", "true", "--vllm-tokenizer-endpoint-template", "http://{ip}:{port}"];

struct Setup {
    sims: Vec<procs::Proc>,
    router: procs::Proc,
    grpc: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

/// `sims` pods of `tiny-chat` (and any extra models served by the same pods), the router with
/// remote tokenization and `extra` flags.
fn setup(sims: usize, local_tokenizer: bool, sim_args: &[&str], models: &[&str], extra: &[&str]) -> Setup {
    let sims: Vec<procs::Proc> = (0..sims).map(|_| procs::sim(sim_args)).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("endpoints.yaml");
    let eps: Vec<String> = sims.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    let tok =
        if local_tokenizer { format!("    tokenizer: {}\n", common::fixture_dir().display()) } else { String::new() };
    let mut yaml = String::from("models:\n");
    for m in models {
        yaml.push_str(&format!("  - name: {m}\n{tok}    endpoints: [{}]\n", eps.join(", ")));
    }
    std::fs::write(&file, yaml).expect("write");
    let mut args: Vec<&str> = REMOTE.to_vec();
    args.extend_from_slice(extra);
    let router = cluster::router(&file, &args);
    let grpc = cluster::grpc_addr(&router);
    Setup { sims, router, grpc, _dir: dir }
}

async fn text(url: String) -> String {
    client().get(url).send().await.expect("get").text().await.expect("text")
}

fn chat_body(content: &str) -> Vec<u8> {
    json!({"model": "tiny-chat", "messages": [{"role": "user", "content": content}]}).to_string().into_bytes()
}

#[tokio::test]
async fn remote_tokens_equal_the_sims_own_chat_template_included() {
    let s = setup(2, false, &[], &["tiny-chat"], &[]);
    let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
    let chat = json!({"model": "tiny-chat", "messages": [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Which pod holds my prefix?"}], "tools": tools,
        "chat_template_kwargs": {"enable_thinking": false}});
    let http = client();
    let routed: Value = http
        .post(s.router.url("/debug/tokenize?path=/v1/chat/completions"))
        .body(chat.to_string())
        .send()
        .await
        .expect("debug")
        .json()
        .await
        .expect("json");
    let own: Value =
        http.post(s.sims[0].url("/tokenize")).json(&chat).send().await.expect("sim").json().await.expect("json");
    assert_eq!(routed["space"], "engine");
    assert_eq!(routed["tokens"], own["tokens"], "the router routes on exactly the engine's tokens");

    let completion = json!({"model": "tiny-chat", "prompt": "Hello world, again"});
    let routed: Value = http
        .post(s.router.url("/debug/tokenize?path=/v1/completions"))
        .body(completion.to_string())
        .send()
        .await
        .expect("debug")
        .json()
        .await
        .expect("json");
    let own: Value =
        http.post(s.sims[1].url("/tokenize")).json(&completion).send().await.expect("sim").json().await.expect("json");
    assert_eq!((routed["space"].clone(), routed["tokens"].clone()), (json!("engine"), own["tokens"].clone()));

    // Token ids need no call; a repeated request is served from the cache.
    let calls = |m: &str| metric_where(m, "prefix_router_tokenizer_calls_total", "outcome=\"ok\"");
    let before = calls(&text(s.router.url("/metrics")).await);
    for _ in 0..3 {
        http.post(s.router.url("/debug/tokenize?path=/v1/completions"))
            .body(completion.to_string())
            .send()
            .await
            .expect("debug");
    }
    http.post(s.router.url("/debug/tokenize?path=/v1/completions"))
        .body(json!({"model": "tiny-chat", "prompt": [1, 2, 3]}).to_string())
        .send()
        .await
        .expect("debug");
    let m = text(s.router.url("/metrics")).await;
    assert_eq!(calls(&m), before, "no call for cached requests or token ids");
    assert!(metric_where(&m, "prefix_router_tokenize_cache_total", "result=\"hit\"") >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_stick_through_envoy_on_engine_templated_tokens() {
    let cluster = Cluster::start(
        Mode::FullDuplex,
        Options { local_tokenizer: false, router_args: &REMOTE, ..Options::default() },
    );
    let url = cluster.envoy.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..12)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut messages: Vec<Value> = Vec::new();
                let mut pods = Vec::new();
                for t in 0..4 {
                    let content: String =
                        (0..10).map(|i| format!("Chat {c}, turn {t}, line {i} about caches. ")).collect();
                    messages.push(json!({"role": "user", "content": content}));
                    let res = client()
                        .post(&url)
                        .json(&json!({"model": "tiny-chat", "messages": messages, "max_tokens": 6}))
                        .send()
                        .await
                        .expect("request");
                    assert_eq!(res.status(), 200);
                    pods.push(res.headers()["x-sim-id"].to_str().expect("id").to_owned());
                    let body: Value = res.json().await.expect("json");
                    messages.push(json!({"role": "assistant", "content": body["choices"][0]["message"]["content"]}));
                }
                pods
            })
        })
        .collect();
    let (mut later, mut stuck) = (0, 0);
    for t in tasks {
        let pods = t.await.expect("conversation");
        later += pods.len() - 1;
        stuck += pods[1..].iter().filter(|p| **p == pods[0]).count();
    }
    eprintln!("engine-token stickiness: {stuck}/{later}");
    assert!(stuck * 100 >= later * 95, "{stuck}/{later}");
    let m = cluster.router_metrics().await;
    assert_eq!(metric_where(&m, "prefix_router_tokenized_requests_total", "space=\"engine\""), 48.0);
    assert_eq!(metric(&m, "prefix_router_tokenize_fallbacks_total"), 0.0);
    // No failure yet, but each cause is exported at 0: an alert on its rate has a series to read.
    for cause in ["timeout", "connect_error", "http_error", "bad_response"] {
        assert!(m.contains(&format!("prefix_router_tokenize_fallbacks_total{{cause=\"{cause}\"}} 0")), "{cause}:\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pod_costs_no_request_and_is_used_again_when_it_returns() {
    let mut s = setup(3, true, &[], &["tiny-chat"], &["--tokenizer-health-check-period", "500ms"]);
    let ext = connect(s.grpc).await;
    let load = |n: usize, tag: &'static str| {
        let ext = ext.clone();
        async move {
            for i in 0..n {
                let (_, first) = decide(&ext, "/v1/chat/completions", &chat_body(&format!("{tag} request {i}"))).await;
                assert!(destination(&first).is_some(), "request {i} was routed");
            }
        }
    };
    load(30, "warm").await;
    let victim = s.sims.remove(0);
    let victim_addr = victim.addr;
    drop(victim); // killed
    load(60, "during").await;
    let m = text(s.router.url("/metrics")).await;
    assert_eq!(metric(&m, "prefix_router_tokenize_fallbacks_total"), 0.0, "the retry covered every failure:\n{m}");
    assert_eq!(metric_where(&m, "prefix_router_tokenized_requests_total", "space=\"engine\""), 90.0);
    assert_eq!(metric_where(&m, "prefix_router_tokenizer_endpoints", "state=\"ejected\""), 1.0, "ejected");

    // Back on the same address: probed back within a period or two, then used again.
    let back = procs::sim_at(victim_addr.port(), &[]);
    let mut ejected = 1.0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ejected = metric_where(
            &text(s.router.url("/metrics")).await,
            "prefix_router_tokenizer_endpoints",
            "state=\"ejected\"",
        );
        if ejected == 0.0 {
            break;
        }
    }
    assert_eq!(ejected, 0.0, "the returned pod was probed back");
    load(30, "after").await;
    let served = metric(&text(back.url("/metrics")).await, "vllm_sim_tokenize_requests_total");
    assert!(served >= 3.0, "the returned pod takes tokenize traffic again ({served} calls)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_tokenizer_costs_at_most_the_timeout_and_all_down_falls_back() {
    let s = setup(3, true, &[], &["tiny-chat"], &["--tokenizer-request-timeout", "200ms"]);
    let ext = connect(s.grpc).await;
    let http = client();
    http.put(s.sims[0].url("/sim/faults")).json(&json!({"tokenize_hang": true})).send().await.expect("fault");
    let mut times = Vec::new();
    for i in 0..100 {
        let (t, first) = decide(&ext, "/v1/chat/completions", &chat_body(&format!("hung pod request {i}"))).await;
        assert!(destination(&first).is_some());
        times.push(t);
    }
    times.sort();
    let p99 = times[98];
    eprintln!("routing time with one hung pod: p50 {:?}, p99 {p99:?}, max {:?}", times[50], times[99]);
    assert!(p99 <= Duration::from_millis(250), "p99 {p99:?} over timeout + 50 ms");

    for sim in &s.sims {
        http.put(sim.url("/sim/faults")).json(&json!({"tokenize_error_rate": 1.0})).send().await.expect("fault");
    }
    for i in 0..10 {
        let (_, first) = decide(&ext, "/v1/chat/completions", &chat_body(&format!("all down {i}"))).await;
        assert!(destination(&first).is_some(), "still routed with every tokenizer down");
    }
    let m = text(s.router.url("/metrics")).await;
    assert!(metric(&m, "prefix_router_tokenize_fallbacks_total") >= 10.0, "{m}");
    // Tokenized locally: in the local space, or the engine's once the local tokenizer was verified
    // against a pod (the sims use the same fixture), never the approximation.
    assert_eq!(metric(&m, "prefix_router_tokenized_requests_total"), 110.0, "{m}");
    assert_eq!(metric_where(&m, "prefix_router_tokenized_requests_total", "space=\"approx\""), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_makes_one_entry_per_model_caps_models_and_expires_them() {
    let served = ["--served-model-name", "m1", "--served-model-name", "m2", "--served-model-name", "m3"];
    let s =
        setup(1, false, &served, &["m1", "m2", "m3"], &["--max-tokenizers-per-pool", "2", "--tokenizer-ttl", "700ms"]);
    let ext = connect(s.grpc).await;
    let first_requests: Vec<_> = (0..500)
        .map(|i| {
            let ext = ext.clone();
            tokio::spawn(async move {
                let body = json!({"model": "m1", "prompt": format!("first request {i}")}).to_string();
                destination(&decide(&ext, "/v1/completions", body.as_bytes()).await.1).is_some()
            })
        })
        .collect();
    for r in first_requests {
        assert!(r.await.expect("joined"));
    }
    let events =
        |m: &str, e: &str| metric_where(m, "prefix_router_tokenizer_pool_events_total", &format!("event=\"{e}\""));
    let m = text(s.router.url("/metrics")).await;
    assert_eq!((events(&m, "created"), metric(&m, "prefix_router_tokenizer_pool_models")), (1.0, 1.0));

    for model in ["m2", "m3"] {
        let body = json!({"model": model, "prompt": "hello"}).to_string();
        decide(&ext, "/v1/completions", body.as_bytes()).await;
    }
    let m = text(s.router.url("/metrics")).await;
    assert_eq!(events(&m, "created"), 3.0);
    assert_eq!(events(&m, "evicted"), 1.0, "the cap of 2 evicted the least recently used");
    assert_eq!(metric(&m, "prefix_router_tokenizer_pool_models"), 2.0);

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let m = text(s.router.url("/metrics")).await;
    assert_eq!(events(&m, "expired"), 2.0, "unused entries expire after the TTL");
    assert_eq!(metric(&m, "prefix_router_tokenizer_pool_models"), 0.0);
}
