//! Cold 1k-token text prompts through the router's own decision path — parse, local tokenization
//! (Qwen3 fixture, as `server.rs` wires it: token cache, CPU pool, input cap), hash, lookup, pick,
//! record — in-process, on a runtime of one worker per core, against the tokenizer's own ceiling
//! measured in the same run: raw `encode` of the same kind of prompts on one thread.
//!
//! `cargo bench --bench tokenize_throughput` (env SECONDS=5 per measurement, ROUNDS=2). Prints
//! decisions/s and their ratio to cores × the single-core ceiling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hf_chat::HfTokenizer;
use prefix_router::discovery::{EndpointSpec, Engine, ModelSpec, Registry};
use prefix_router::metrics::Metrics;
use prefix_router::openai::{self, Endpoint};
use prefix_router::routing::Router;
use prefix_router::tokenizer::{CpuPool, Limits, LocalTokenizer, PieceCache, TokenCache, Tokenization};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A ~1k-token prompt (Qwen3) that shares no block with any other `id`.
fn prompt(id: u64) -> String {
    (0..56).map(|i| format!("Request {id} sentence {i} about blocks. ")).collect()
}

fn router(tok: Arc<HfTokenizer>) -> Router {
    let registry = Arc::new(Registry::new());
    let endpoints = (0..8)
        .map(|i| EndpointSpec {
            key: format!("pod-{i}"),
            addr: format!("10.0.0.{}:8000", i + 1).parse().expect("addr"),
            engine: Engine::Vllm,
        })
        .collect();
    registry.publish(vec![ModelSpec { name: "m".into(), tokenizer: Some(tok), endpoints }]);
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    // The defaults of `Config` (64 MiB token cache, one worker per core, queue 256, 512 KiB cap).
    let cache = Arc::new(TokenCache::new(64 << 20));
    let local = LocalTokenizer::new(4, Some(PieceCache { cache: Arc::clone(&cache), metrics: Arc::clone(&metrics) }))
        .with_limits(Limits {
            cpu: Arc::new(CpuPool::new(0, 256)),
            max_bytes: 512 * 1024,
            metrics: Arc::clone(&metrics),
        });
    let tokenization = Arc::new(Tokenization::new(local, None, cache, Arc::clone(&metrics)));
    let cfg = prefix_router::config::Config::default_routing().expect("default flags");
    Router::new(registry, tokenization, cfg, metrics)
}

/// Raw encodes per second on this thread, each prompt new.
fn ceiling(tok: &HfTokenizer, secs: u64, base: u64) -> (f64, usize) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (started, mut n, mut tokens) = (Instant::now(), 0u64, 0);
    while Instant::now() < deadline {
        tokens = tok.encode(&prompt(base + n), true).map_or(0, |t| t.len());
        n += 1;
    }
    (n as f64 / started.elapsed().as_secs_f64(), tokens)
}

/// Decisions per second from `tasks` concurrent loops, each prompt new.
fn decisions(rt: &tokio::runtime::Runtime, r: &Arc<Router>, secs: u64, tasks: usize, base: u64) -> f64 {
    let next = Arc::new(AtomicU64::new(base));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let done: u64 = rt.block_on(async {
        let loops: Vec<_> = (0..tasks)
            .map(|_| {
                let (r, next) = (Arc::clone(r), Arc::clone(&next));
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        let body = serde_json::json!({"model": "m", "prompt": prompt(id)}).to_string();
                        let req = openai::parse(Endpoint::Completions, body.as_bytes()).expect("parses");
                        let d = r.route(&req).await.expect("routed");
                        std::hint::black_box(d.destination());
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for l in loops {
            total += l.await.expect("task");
        }
        total
    });
    done as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let (secs, rounds) = (env_or("SECONDS", 5), env_or("ROUNDS", 2));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let tok = Arc::new(
        HfTokenizer::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/qwen3"))
            .expect("fixture"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build().expect("runtime");
    let r = Arc::new(router(Arc::clone(&tok)));
    // Warm the tokenizer and the allocator once.
    let _ = ceiling(&tok, 1, 0);
    let _ = decisions(&rt, &r, 1, 8, 10_000_000);
    let (mut ceil, mut routed, mut tokens) = (Vec::new(), Vec::new(), 0);
    for round in 0..rounds {
        // Alternate, so drift hits both alike; new prompt ids every time (cold: no cache hit).
        let (c, t) = ceiling(&tok, secs, 100_000_000 * (round + 1));
        ceil.push(c);
        tokens = t;
        routed.push(decisions(&rt, &r, secs, 8, 100_000_000 * (round + 1) + 50_000_000));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (c, d) = (mean(&ceil), mean(&routed));
    println!(
        "cold text prompts of {tokens} tokens (Qwen3), {cores} cores, {rounds} rounds × {secs} s each, alternating\n"
    );
    println!("| measurement | per second |");
    println!("|---|---:|");
    println!("| tokenizer ceiling, raw encode on one thread | {c:.0} prompts |");
    println!("| {cores} × that ceiling | {:.0} prompts |", c * cores as f64);
    println!("| router decisions (parse + tokenize + hash + lookup + pick + record), {cores} workers, 8 in flight | {d:.0} decisions |");
    println!("\ndecisions/s ÷ ({cores} × ceiling): **{:.0}%**", 100.0 * d / (c * cores as f64));
}
