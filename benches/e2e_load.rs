//! Load harness for the whole path, all on loopback: one `vllm-sim` (no modelled prefill/decode, so
//! the backend costs only its HTTP handling and tokenization), the router on the endpoints file,
//! and two real Envoys — one straight to the sim, one through the router (FULL_DUPLEX_STREAMED).
//!
//! `cargo bench --bench e2e_load` (env: SECONDS=4 per round, RATE=100 req/s, ROUNDS=3). Prints
//! latency through each path at the same open-loop rate (rounds alternate, so drift hits both), the
//! difference (what the router adds), and requests/s at saturation (16 connections).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/bins.rs"]
mod bins;
#[path = "../tests/common/bootstrap.rs"]
mod bootstrap;
#[path = "support/procs.rs"]
mod procs;

use procs::{free_port, start, wait_port};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const DIRECT: &str = r#"
static_resources:
  listeners:
  - address: {socket_address: {address: 127.0.0.1, port_value: LISTEN}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: direct
          route_config:
            virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: sim}}]}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: sim
    type: STATIC
    load_assignment:
      cluster_name: sim
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: SIM}}}}]}]
"#;

/// Open loop at `rate` for `secs`; returns each request's latency.
async fn fixed_rate(client: &reqwest::Client, url: &str, body: &Arc<String>, rate: u64, secs: u64) -> Vec<Duration> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for _ in 0..rate * secs {
        tick.tick().await;
        let (client, url, body, tx) = (client.clone(), url.to_owned(), Arc::clone(body), tx.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let res = client.post(url).header("content-type", "application/json").body(body.to_string()).send().await;
            let ok = match res {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            let _ = tx.send(ok.then(|| t.elapsed()));
        });
    }
    drop(tx);
    let mut out = Vec::new();
    while let Some(r) = rx.recv().await {
        out.push(r.expect("request failed under load"));
    }
    out
}

async fn saturate(client: &reqwest::Client, url: &str, body: &Arc<String>, secs: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.to_owned(), Arc::clone(body));
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await;
                    if let Ok(r) = r {
                        if r.status().is_success() && r.bytes().await.is_ok() {
                            n += 1;
                        }
                    }
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let (secs, rate, rounds) = (env_or("SECONDS", 4), env_or("RATE", 100), env_or("ROUNDS", 3));
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tok = repo.join("../shared/fixtures/qwen3");
    let tok = tok.to_str().expect("utf-8");
    let (_sim, line) = start(
        bins::vllm_sim().to_str().expect("utf-8 path"),
        &[
            "--port",
            "0",
            "--model",
            "m",
            "--tokenizer",
            tok,
            "--prefill-us-per-token",
            "0",
            "--decode-ms-per-token",
            "0",
        ],
    );
    let sim_addr = line.trim().rsplit_once("http://").map(|(_, a)| a.to_owned()).expect("sim address");
    let dir = std::env::temp_dir().join(format!("e2e-load-{}", free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let endpoints = dir.join("endpoints.yaml");
    std::fs::write(
        &endpoints,
        format!("models:\n  - name: m\n    tokenizer: {tok}\n    endpoints: [\"{sim_addr}\"]\n"),
    )
    .expect("write");
    let (_router, rline) = start(
        env!("CARGO_BIN_EXE_prefix-router"),
        &[
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--grpc-health-port",
            "0",
            "--metrics-port",
            "0",
            "--endpoints-file",
            endpoints.to_str().expect("utf-8"),
        ],
    );
    let grpc: String = rline.split_whitespace().find_map(|w| w.strip_prefix("grpc=")).expect("grpc").to_owned();
    let grpc_port = grpc.rsplit_once(':').map(|(_, p)| p.to_owned()).expect("port");

    let (p_direct, p_routed) = (free_port(), free_port());
    let sim_port = sim_addr.rsplit_once(':').map(|(_, p)| p.to_owned()).expect("port");
    let _direct = procs::envoy(&DIRECT.replace("LISTEN", &p_direct.to_string()).replace("SIM", &sim_port), 1);
    let example = std::fs::read_to_string(repo.join("examples/envoy-full-duplex.yaml")).expect("example");
    let sim: std::net::SocketAddr = sim_addr.parse().expect("sim address");
    let routed_cfg = bootstrap::rewrite(&example, p_routed, free_port(), &[grpc_port.parse().expect("port")], &[sim]);
    let _routed = procs::envoy(&routed_cfg, 1);
    wait_port(p_direct).await;
    wait_port(p_routed).await;

    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
    let short = Arc::new(serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "What is a KV cache, briefly?"}], "max_tokens": 1}).to_string());
    let long_text: String = (0..110).map(|i| format!("Sentence {i} explains why blocks are reused. ")).collect();
    let long = Arc::new(serde_json::json!({"model": "m", "prompt": long_text, "max_tokens": 1}).to_string());
    let direct = format!("http://127.0.0.1:{p_direct}");
    let routed = format!("http://127.0.0.1:{p_routed}");
    println!("rate {rate} req/s, {rounds} rounds × {secs} s per path and request; 2 cores shared by client, Envoys, router, sim\n");
    println!("| request | path | p50 | p99 |");
    println!("|---|---|---:|---:|");
    let mut added = Vec::new();
    for (name, body, path) in
        [("chat, ~20 tokens", &short, "/v1/chat/completions"), ("completion, ~1.1k tokens", &long, "/v1/completions")]
    {
        // Warm both paths (connections, caches of the sim's tokenizer, Envoy clusters).
        let _ = fixed_rate(&client, &format!("{direct}{path}"), body, 50, 1).await;
        let _ = fixed_rate(&client, &format!("{routed}{path}"), body, 50, 1).await;
        let (mut d, mut r) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            d.extend(fixed_rate(&client, &format!("{direct}{path}"), body, rate, secs).await);
            r.extend(fixed_rate(&client, &format!("{routed}{path}"), body, rate, secs).await);
        }
        let (d50, d99, r50, r99) = (pct(&mut d, 0.5), pct(&mut d, 0.99), pct(&mut r, 0.5), pct(&mut r, 0.99));
        println!("| {name} | Envoy → sim | {:.0} µs | {:.0} µs |", d50, d99);
        println!("| {name} | Envoy → router → sim | {:.0} µs | {:.0} µs |", r50, r99);
        added.push((name, r50 - d50, r99 - d99));
    }
    println!("\n| request | added by the router, p50 | added, p99 |");
    println!("|---|---:|---:|");
    for (name, a50, a99) in added {
        println!("| {name} | {:.0} µs | {:.0} µs |", a50, a99);
    }
    let direct_rps = saturate(&client, &format!("{direct}/v1/chat/completions"), &short, secs).await;
    let routed_rps = saturate(&client, &format!("{routed}/v1/chat/completions"), &short, secs).await;
    println!("\n| saturation (16 connections, short chat) | requests/s |");
    println!("|---|---:|");
    println!("| Envoy → sim | {direct_rps:.0} |");
    println!("| Envoy → router → sim | {routed_rps:.0} |");
}
