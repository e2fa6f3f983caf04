//! KV events end to end: real `vllm-sim` pods publishing as vLLM 0.33 does, the real router
//! subscribed to them. What the router's index holds is read from `/debug/endpoints`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{free_port, router};
use common::procs::{sim_at, Proc};
use common::{client, metric};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const REMOTE: [&str; 4] =
    ["--enable-vllm-remote-tokenizer", "true", "--vllm-tokenizer-endpoint-template", "http://{ip}:{port}"];

fn events_config(pub_port: u16, replay_port: u16) -> String {
    json!({"enable_kv_cache_events": true, "publisher": "zmq",
           "endpoint": format!("tcp://127.0.0.1:{pub_port}"),
           "replay_endpoint": format!("tcp://127.0.0.1:{replay_port}"), "topic": "kv"})
    .to_string()
}

struct Pod {
    proc: Option<Proc>,
    port: u16,
    config: String,
    id: String,
}

impl Pod {
    fn start(id: &str) -> Pod {
        let (port, config) = (free_port(), events_config(free_port(), free_port()));
        let mut pod = Pod { proc: None, port, config, id: id.into() };
        pod.restart();
        pod
    }

    /// (Re)starts the sim on the same ports: a new engine process, empty cache, seq from 0.
    fn restart(&mut self) {
        drop(self.proc.take());
        let args = ["--id", self.id.as_str(), "--num-gpu-blocks", "64", "--kv-events-config", self.config.as_str()];
        self.proc = Some(sim_at(self.port, &args));
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn endpoints_file(dir: &tempfile::TempDir, pods: &[&Pod]) -> std::path::PathBuf {
    let eps: Vec<String> = pods.iter().map(|p| format!("\"127.0.0.1:{}\"", p.port)).collect();
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(
        &file,
        format!("models:\n  - name: tiny-chat\n    engine: vllm\n    endpoints: [{}]\n", eps.join(", ")),
    )
    .expect("write");
    file
}

fn admin(router: &Proc) -> String {
    router.line.split_whitespace().find_map(|w| w.strip_prefix("admin=")).expect("admin").to_owned()
}

/// The router's `/debug/endpoints`.
async fn debug_endpoints(router: &Proc) -> Value {
    client().get(format!("{}/debug/endpoints", admin(router))).send().await.expect("get").json().await.expect("json")
}

/// (trust, event blocks) of the pod on `port`, as the router reports it.
async fn seen(router: &Proc, port: u16) -> (String, u64) {
    let v = debug_endpoints(router).await;
    let e = v["models"][0]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["address"] == format!("127.0.0.1:{port}"))
        .cloned()
        .expect("the pod");
    (e["trust"].as_str().unwrap_or("").to_owned(), e["event_blocks"].as_u64().unwrap_or(0))
}

async fn wait_for(router: &Proc, port: u16, what: &str, ok: impl Fn(&(String, u64)) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let s = seen(router, port).await;
        if ok(&s) {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{what}: still {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A prompt of exactly `blocks` × 16 tokens (Qwen3: "a" repeated is one token each with spaces).
fn prompt(tag: &str, words: usize) -> String {
    format!("{tag} {}", "hello ".repeat(words))
}

async fn complete(url: String, text: &str) -> Value {
    let res = client()
        .post(url)
        .json(&json!({"model": "tiny-chat", "prompt": text, "max_tokens": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 200);
    res.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_follows_live_events_replay_restart_and_reset() {
    // The engine already holds a prompt before the router starts: replay from 0 brings it.
    let mut pod = Pod::start("sim-0");
    complete(pod.url("/v1/completions"), &prompt("before", 100)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = endpoints_file(&dir, &[&pod]);
    let mut args = vec!["--kv-events=true"];
    args.extend_from_slice(&REMOTE);
    let r = router(&file, &args);
    wait_for(&r, pod.port, "replayed from 0", |(t, n)| t == "exact" && *n >= 6).await;
    let (_, before) = seen(&r, pod.port).await;

    // Live: traffic sent straight to the pod (not through the router) shows up.
    complete(pod.url("/v1/completions"), &prompt("live", 100)).await;
    let lag = wait_for(&r, pod.port, "live events", |(_, n)| *n > before).await;
    eprintln!("a live BlockStored reached the index within {lag:?}");

    // reset_prefix_cache: AllBlocksCleared empties the pod's view.
    let res = client().post(pod.url("/reset_prefix_cache")).send().await.expect("reset");
    assert_eq!(res.status(), 200);
    wait_for(&r, pod.port, "cleared", |(_, n)| *n == 0).await;
    complete(pod.url("/v1/completions"), &prompt("after reset", 100)).await;
    wait_for(&r, pod.port, "stored after the reset", |(t, n)| t == "exact" && *n > 0).await;

    // Restart on the same ports: seq starts at 0 again with an empty cache. Once the new process
    // publishes, the router forgets the old blocks and holds only the new ones.
    pod.restart();
    let restarted = Instant::now();
    complete(pod.url("/v1/completions"), &prompt("new life", 30)).await;
    let took =
        wait_for(&r, pod.port, "old blocks forgotten after the restart", |(t, n)| t == "exact" && (1..=3).contains(n))
            .await;
    eprintln!(
        "restart: the index held only the new process's blocks {:?} after the first new request ({:?} after start)",
        took,
        restarted.elapsed()
    );
    let m = client().get(format!("{}/metrics", admin(&r))).send().await.expect("metrics").text().await.expect("text");
    assert!(metric(&m, "prefix_router_kv_events_total") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_restarts_empty_loses_its_traffic_to_the_pod_that_still_holds_the_prefix() {
    let mut a = Pod::start("sim-a");
    let b = Pod::start("sim-b");
    let shared = prompt("shared", 120);
    let longer = format!("{shared} and then some more words to make it longer on A");
    // B holds the shared prefix; A holds it and more (so A wins while it is up).
    complete(b.url("/v1/completions"), &shared).await;
    complete(a.url("/v1/completions"), &longer).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = endpoints_file(&dir, &[&a, &b]);
    let mut args = vec!["--kv-events=true"];
    args.extend_from_slice(&REMOTE);
    let r = router(&file, &args);
    wait_for(&r, a.port, "A synced", |(t, n)| t == "exact" && *n > 0).await;
    wait_for(&r, b.port, "B synced", |(t, n)| t == "exact" && *n > 0).await;
    let grpc = common::cluster::grpc_addr(&r);
    let client = common::extproc::connect(grpc).await;
    let body = json!({"model": "tiny-chat", "prompt": longer}).to_string().into_bytes();
    let dest = |resp: &envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse| {
        common::extproc::destination(resp).expect("a destination")
    };
    let (_, resp) = common::extproc::decide(&client, "/v1/completions", &body).await;
    assert_eq!(dest(&resp), format!("127.0.0.1:{}", a.port), "A holds the longest prefix");

    a.restart();
    // A's first event from its new life: an unrelated request straight to it.
    complete(a.url("/v1/completions"), &prompt("unrelated", 20)).await;
    let sent = Instant::now();
    loop {
        let (_, resp) = common::extproc::decide(&client, "/v1/completions", &body).await;
        if dest(&resp) == format!("127.0.0.1:{}", b.port) {
            break;
        }
        assert!(sent.elapsed() < Duration::from_secs(5), "traffic still goes to the restarted pod");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("the restarted pod stopped attracting its old prefix {:?} after its first new request", sent.elapsed());
    for _ in 0..5 {
        let (_, resp) = common::extproc::decide(&client, "/v1/completions", &body).await;
        assert_eq!(dest(&resp), format!("127.0.0.1:{}", b.port), "B, which holds the prefix, keeps it");
    }
}

/// The model's `local_tokenizer_engine_equal` verdict in `/debug/endpoints` once decided.
async fn verdict(router: &Proc) -> bool {
    let started = Instant::now();
    loop {
        let v = debug_endpoints(router).await;
        if let Some(b) = v["models"][0]["local_tokenizer_engine_equal"].as_bool() {
            return b;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the local tokenizer was checked: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The token space `/debug/tokenize` reports for a short chat.
async fn space_of_chat(router: &Proc) -> String {
    let v = common::post_json(&format!("{}/debug/tokenize", admin(router)), &chat("sys", "hi")).await;
    v["space"].as_str().unwrap_or_default().to_owned()
}

fn chat(system: &str, user: &str) -> Value {
    json!({"model": "tiny-chat", "max_tokens": 1,
           "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_tokenizer_that_agrees_with_the_engine_matches_events_and_one_that_differs_keeps_its_space() {
    let pods: Vec<Pod> = (0..3).map(|i| Pod::start(&format!("sim-{i}"))).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = endpoints_file(&dir, &pods.iter().collect::<Vec<_>>());
    let with_tokenizer = |file: &std::path::Path, tokenizer: &std::path::Path| {
        let text = std::fs::read_to_string(file).expect("read");
        let text =
            text.replace("    engine: vllm\n", &format!("    engine: vllm\n    tokenizer: {}\n", tokenizer.display()));
        let out = file.with_file_name(format!("{}-endpoints.yaml", free_port()));
        std::fs::write(&out, text).expect("write");
        out
    };
    // The sims tokenize with the Qwen3 fixture: the same tokenizer agrees.
    let r = router(&with_tokenizer(&file, &common::fixture_dir()), &["--kv-events=true"]);
    for p in &pods {
        wait_for(&r, p.port, "subscribed", |(t, _)| t == "exact").await;
    }
    assert!(verdict(&r).await, "the fixture agrees with the sims' /tokenize");
    // The pods' cache size, from their vllm:cache_config_info (64 blocks of 16 tokens).
    let started = Instant::now();
    loop {
        let v = debug_endpoints(&r).await;
        if v["models"][0]["endpoints"].as_array().expect("endpoints").iter().all(|e| e["cache_tokens"] == 1024) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the pods' cache sizes are known: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(space_of_chat(&r).await, "engine", "verified local tokens are engine tokens");

    // Conversations sent straight to two pods (the router never saw them): its next decisions,
    // on local tokens and no remote tokenization, follow the pods' events.
    let grpc = common::cluster::grpc_addr(&r);
    let client_ = common::extproc::connect(grpc).await;
    for (i, pod) in pods.iter().enumerate().skip(1) {
        let system = format!("You are assistant number {i}. {}", "Answer with care and cite the cache. ".repeat(20));
        let before = seen(&r, pod.port).await.1;
        let res =
            client().post(pod.url("/v1/chat/completions")).json(&chat(&system, "first")).send().await.expect("post");
        assert_eq!(res.status(), 200);
        wait_for(&r, pod.port, "stored", |(_, n)| *n > before).await;
        for turn in 0..3 {
            let body = chat(&system, &format!("follow-up {turn}")).to_string();
            let (_, resp) = common::extproc::decide(&client_, "/v1/chat/completions", body.as_bytes()).await;
            assert_eq!(
                common::extproc::destination(&resp),
                Some(format!("127.0.0.1:{}", pod.port)),
                "conversation {i}, turn {turn}: routed to the pod whose events hold its system prompt"
            );
        }
    }

    // A tokenizer whose chat template differs from the engine's: the probe catches it.
    let changed = tempfile::tempdir().expect("tempdir");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(common::fixture_dir().join(f), changed.path().join(f)).expect("copy");
    }
    let cfg_path = changed.path().join("tokenizer_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("read")).expect("json");
    cfg["chat_template"] = json!("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}");
    std::fs::write(&cfg_path, cfg.to_string()).expect("write");
    let r2 = router(&with_tokenizer(&file, changed.path()), &["--kv-events=true"]);
    assert!(!verdict(&r2).await, "a different chat template is not the engine's");
    assert_eq!(space_of_chat(&r2).await, "local", "its tokens keep their own space");
}
