//! Load harness for the whole path, all on loopback: one `vllm-sim` (no modelled prefill/decode, so
//! the backend costs only its HTTP handling and tokenization), the router on the endpoints file,
//! and real Envoys — one straight to the sim, four through the router (one per wiring compared).
//!
//! `cargo bench --bench e2e_load` (env: SECONDS=4 per round, RATE=100 req/s, ROUNDS=3). Prints
//! latency straight through Envoy and through the router in four Envoy wirings (BUFFERED or
//! FULL_DUPLEX_STREAMED request bodies; response headers, none, or response bodies too) at the same
//! open-loop rate (rounds alternate, so drift hits all alike), what the router adds in each, and
//! requests/s at saturation (16 connections, the buffered example).
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

/// (name, example bootstrap, text edits applied to it)
type Wiring = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

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

    let p_direct = free_port();
    let sim_port = sim_addr.rsplit_once(':').map(|(_, p)| p.to_owned()).expect("port");
    let _direct = procs::envoy(&DIRECT.replace("LISTEN", &p_direct.to_string()).replace("SIM", &sim_port), 1);
    let sim: std::net::SocketAddr = sim_addr.parse().expect("sim address");
    // The Envoy wirings compared: both examples, and each with its response phases changed.
    let configs: [Wiring; 4] = [
        ("BUFFERED, response headers (examples/envoy-buffered.yaml)", "envoy-buffered.yaml", &[]),
        (
            "BUFFERED, no response phase",
            "envoy-buffered.yaml",
            &[("response_header_mode: SEND", "response_header_mode: SKIP")],
        ),
        ("FULL_DUPLEX_STREAMED, response headers (examples/envoy-full-duplex.yaml)", "envoy-full-duplex.yaml", &[]),
        (
            "FULL_DUPLEX_STREAMED both ways (the Envoy Gateway overlay)",
            "envoy-full-duplex.yaml",
            &[("response_body_mode: NONE", "response_body_mode: FULL_DUPLEX_STREAMED")],
        ),
    ];
    let mut routed_envoys = Vec::new();
    let mut routed_urls = Vec::new();
    for (_, file, edits) in &configs {
        let port = free_port();
        let example = std::fs::read_to_string(repo.join("examples").join(file)).expect("example");
        let mut cfg = bootstrap::rewrite(&example, port, free_port(), &[grpc_port.parse().expect("port")], &[sim]);
        for (from, to) in *edits {
            assert!(cfg.contains(from), "{file}: {from}");
            cfg = cfg.replace(from, to);
        }
        routed_envoys.push(procs::envoy(&cfg, 1));
        routed_urls.push(format!("http://127.0.0.1:{port}"));
        wait_port(port).await;
    }
    wait_port(p_direct).await;

    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
    let short = Arc::new(serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "What is a KV cache, briefly?"}], "max_tokens": 1}).to_string());
    let long_text: String = (0..110).map(|i| format!("Sentence {i} explains why blocks are reused. ")).collect();
    let long = Arc::new(serde_json::json!({"model": "m", "prompt": long_text, "max_tokens": 1}).to_string());
    // A trace-replay-sized body: token ids (no tokenization anywhere), ≈ 55 KB of JSON.
    let ids: Vec<u32> = (0..8192u32).map(|i| i.wrapping_mul(2_654_435_761) % 150_000).collect();
    let ids = Arc::new(serde_json::json!({"model": "m", "prompt": ids, "max_tokens": 1}).to_string());
    let direct = format!("http://127.0.0.1:{p_direct}");
    println!("rate {rate} req/s, {rounds} rounds × {secs} s per path and request (paths interleaved each round); 2 cores shared by client, Envoys, router, sim\n");
    let mut added = Vec::new();
    for (name, body, path) in [
        ("chat, ~20 tokens", &short, "/v1/chat/completions"),
        ("completion, ~1.1k tokens", &long, "/v1/completions"),
        ("completion, 8k token ids", &ids, "/v1/completions"),
    ] {
        // Warm every path (connections, caches of the sim's tokenizer, Envoy clusters).
        let _ = fixed_rate(&client, &format!("{direct}{path}"), body, 50, 1).await;
        for u in &routed_urls {
            let _ = fixed_rate(&client, &format!("{u}{path}"), body, 50, 1).await;
        }
        let mut d = Vec::new();
        let mut r: Vec<Vec<Duration>> = vec![Vec::new(); routed_urls.len()];
        for _ in 0..rounds {
            d.extend(fixed_rate(&client, &format!("{direct}{path}"), body, rate, secs).await);
            for (i, u) in routed_urls.iter().enumerate() {
                r[i].extend(fixed_rate(&client, &format!("{u}{path}"), body, rate, secs).await);
            }
        }
        let (d50, d99) = (pct(&mut d, 0.5), pct(&mut d, 0.99));
        for (i, (cfg, _, _)) in configs.iter().enumerate() {
            let (r50, r99) = (pct(&mut r[i], 0.5), pct(&mut r[i], 0.99));
            added.push((name, *cfg, r50 - d50, r99 - d99, r50, r99));
        }
        added.push((name, "Envoy → sim, no router", 0.0, 0.0, d50, d99));
    }
    println!("| request | Envoy wiring | latency p50 | p99 | added by the router, p50 | added, p99 |");
    println!("|---|---|---:|---:|---:|---:|");
    for (name, cfg, a50, a99, l50, l99) in &added {
        println!("| {name} | {cfg} | {l50:.0} µs | {l99:.0} µs | {a50:.0} µs | {a99:.0} µs |");
    }
    let routed = routed_urls[0].clone();
    let direct_rps = saturate(&client, &format!("{direct}/v1/chat/completions"), &short, secs).await;
    let routed_rps = saturate(&client, &format!("{routed}/v1/chat/completions"), &short, secs).await;
    println!("\n| saturation (16 connections, short chat) | requests/s |");
    println!("|---|---:|");
    println!("| Envoy → sim | {direct_rps:.0} |");
    println!("| Envoy → router → sim | {routed_rps:.0} |");
}
