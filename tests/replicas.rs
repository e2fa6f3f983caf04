//! Several router replicas behind one real Envoy (it spreads ext_proc streams over them round
//! robin, as a Service in front of a Deployment does) in front of four `vllm-sim` pods, on
//! multi-turn conversations that resend their history each turn. With KV events every replica
//! sees what every pod holds; without events and without a tokenizer, the replicas see in the
//! pods' metrics that others send them requests too, and place new conversations by rendezvous
//! hashing, which keeps them agreeing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{free_port, router, Envoy, Mode};
use common::procs::{sim_at, Proc};
use common::{client, metric};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const REMOTE: [&str; 4] =
    ["--enable-vllm-remote-tokenizer", "true", "--vllm-tokenizer-endpoint-template", "http://{ip}:{port}"];

struct Setup {
    sims: Vec<Proc>,
    routers: Vec<Proc>,
    envoy: Envoy,
    _dir: tempfile::TempDir,
}

fn start(replicas: usize, events: bool) -> Setup {
    let sims: Vec<Proc> = (0..4)
        .map(|i| {
            let config = json!({"enable_kv_cache_events": true, "publisher": "zmq",
                "endpoint": format!("tcp://127.0.0.1:{}", free_port()),
                "replay_endpoint": format!("tcp://127.0.0.1:{}", free_port())})
            .to_string();
            let id = format!("sim-{i}");
            sim_at(0, &["--id", &id, "--kv-events-config", &config])
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let eps: Vec<String> = sims.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(
        &file,
        format!("models:\n  - name: tiny-chat\n    engine: vllm\n    endpoints: [{}]\n", eps.join(", ")),
    )
    .expect("write");
    let args: Vec<&str> = if events { [&["--kv-events=true"][..], &REMOTE[..]].concat() } else { Vec::new() };
    let routers: Vec<Proc> = (0..replicas).map(|_| router(&file, &args)).collect();
    let ports: Vec<u16> = routers.iter().map(|r| common::cluster::grpc_addr(r).port()).collect();
    let pods: Vec<std::net::SocketAddr> = sims.iter().map(|s| s.addr).collect();
    let envoy = Envoy::start(Mode::Buffered, &ports, &pods);
    Setup { sims, routers, envoy, _dir: dir }
}

async fn wait_exact(routers: &[Proc]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for r in routers {
        let admin = r.line.split_whitespace().find_map(|w| w.strip_prefix("admin=")).expect("admin").to_owned();
        loop {
            let m = client().get(format!("{admin}/metrics")).send().await.expect("metrics").text().await.expect("text");
            if common::metric_where(&m, "prefix_router_endpoints_by_trust", "state=\"exact\"") == 4.0 {
                break;
            }
            assert!(Instant::now() < deadline, "every pod exact on every replica");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn user_turn(conversation: usize, turn: usize) -> String {
    (0..10)
        .map(|s| format!("Conversation {conversation}, turn {turn}, point {s}: how is block {s} of cache {conversation} reused? "))
        .collect()
}

/// Each replica's view of who sends the pods requests, from `/debug/endpoints`.
async fn traffic(routers: &[Proc]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for r in routers {
        let admin = r.line.split_whitespace().find_map(|w| w.strip_prefix("admin=")).expect("admin").to_owned();
        let v: Value =
            client().get(format!("{admin}/debug/endpoints")).send().await.expect("debug").json().await.expect("json");
        let eps = v["models"][0]["endpoints"].as_array().expect("endpoints");
        out.push(eps.iter().map(|e| e["traffic"].as_str().unwrap_or("").to_owned()).collect());
    }
    out
}

/// Unrelated requests through Envoy until every replica has seen another sender at some pod.
async fn until_replicas_see_each_other(setup: &Setup) -> Duration {
    let (start, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(20));
    let url = setup.envoy.url("/v1/completions");
    for n in 0.. {
        let seen = traffic(&setup.routers).await;
        if seen.iter().all(|pods| pods.iter().any(|t| t == "shared")) {
            return start.elapsed();
        }
        assert!(Instant::now() < deadline, "replicas never saw each other: {seen:?}");
        let body = json!({"model": "tiny-chat", "prompt": format!("warm-up {n}: nothing to do with the chats"), "max_tokens": 1});
        let res = client().post(&url).json(&body).send().await.expect("request");
        assert_eq!(res.status(), 200, "no failed request");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

/// (later turns on their conversation's first pod, later turns, the sims' prefix-cache hit rate)
async fn conversations(setup: &Setup) -> (usize, usize, f64) {
    let url = setup.envoy.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..16)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut messages: Vec<Value> = Vec::new();
                let mut pods = Vec::new();
                for t in 0..5 {
                    messages.push(json!({"role": "user", "content": user_turn(c, t)}));
                    let res = client()
                        .post(&url)
                        .json(&json!({"model": "tiny-chat", "messages": messages, "max_tokens": 8}))
                        .send()
                        .await
                        .expect("request");
                    assert_eq!(res.status(), 200, "no failed request");
                    pods.push(res.headers()["x-sim-id"].to_str().expect("ascii").to_owned());
                    let body: Value = res.json().await.expect("json");
                    messages.push(json!({"role": "assistant", "content": body["choices"][0]["message"]["content"]}));
                    // Think time: the next turn comes after the answer was read.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                pods
            })
        })
        .collect();
    let (mut stuck, mut later) = (0, 0);
    for t in tasks {
        let pods = t.await.expect("conversation");
        later += pods.len() - 1;
        stuck += pods[1..].iter().filter(|p| **p == pods[0]).count();
    }
    let (mut hits, mut queries) = (0.0, 0.0);
    for s in &setup.sims {
        let m = client().get(s.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        hits += metric(&m, "vllm:prefix_cache_hits_total");
        queries += metric(&m, "vllm:prefix_cache_queries_total");
    }
    (stuck, later, hits / queries.max(1.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_agree_with_events_and_without_by_seeing_each_other_in_the_pods_metrics() {
    let one = start(1, true);
    wait_exact(&one.routers).await;
    let (stuck1, later1, hit1) = conversations(&one).await;
    drop(one);
    eprintln!("1 replica, events: {stuck1}/{later1} later turns on their first pod, hit rate {:.1}%", hit1 * 100.0);

    let three = start(3, true);
    wait_exact(&three.routers).await;
    let (stuck3, later3, hit3) = conversations(&three).await;
    drop(three);
    eprintln!(
        "3 replicas, events: {stuck3}/{later3} later turns on their first pod, hit rate {:.1}% ({:.1}% of one replica's)",
        hit3 * 100.0,
        hit3 / hit1 * 100.0
    );
    assert!(stuck3 * 100 >= later3 * 95, "with events: {stuck3}/{later3}");
    assert!(hit3 >= hit1 * 0.95, "with events: hit rate {hit3:.3} vs one replica's {hit1:.3}");

    let plain = start(3, false);
    let took = until_replicas_see_each_other(&plain).await;
    eprintln!("3 replicas, no events: each saw another sender after {took:?}");
    let (stuck0, later0, hit0) = conversations(&plain).await;
    eprintln!(
        "3 replicas, no events, no tokenizer: {stuck0}/{later0} later turns on their first pod, hit rate {:.1}% ({:.1}% of one replica's with events)",
        hit0 * 100.0,
        hit0 / hit1 * 100.0
    );
    assert!(stuck0 * 100 >= later0 * 90, "rendezvous alone: {stuck0}/{later0}");
    assert!(hit0 >= hit1 * 0.90, "rendezvous alone: hit rate {hit0:.3} vs {hit1:.3}");
    drop(plain);

    // One replica without events: every pod's requests are its own.
    let alone = start(1, false);
    let (_, later, _) = conversations(&alone).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let seen = traffic(&alone.routers).await;
    assert!(seen[0].iter().all(|t| t == "alone"), "after {later} later turns: {seen:?}");
}
