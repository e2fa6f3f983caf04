//! The decision path without the network: parse + hash + lookup + pick (+ index record and guard),
//! for 1k/8k/32k-token prompts over 8 and 64 pods, on a warm index; local tokenization and the
//! body parse alone (the token-id reader and the ordinary parse) measured separately.
//! `cargo bench --bench decision` prints criterion's estimates, then a p50/p99 table from 2,000
//! timed decisions per case (criterion reports means, the target is a p99), beside the
//! same decisions parsed the ordinary way (serde for every field, token ids included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{BenchmarkId, Criterion};
use hf_chat::HfTokenizer;
use prefix_router::discovery::{EndpointSpec, Engine, ModelSpec, Registry};
use prefix_router::metrics::Metrics;
use prefix_router::openai::{self, Endpoint};
use prefix_router::routing::Router;
use prefix_router::tokenizer::LocalTokenizer;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator the router ships with (src/bin/prefix-router.rs).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn router(pods: usize) -> Router {
    let registry = Arc::new(Registry::new());
    let endpoints = (0..pods)
        .map(|i| EndpointSpec {
            key: format!("pod-{i}"),
            addr: format!("10.0.{}.{}:8000", i / 250, i % 250 + 1).parse().expect("addr"),
            engine: Engine::Vllm,
        })
        .collect();
    registry.publish(vec![ModelSpec { name: "m".into(), tokenizer: None, endpoints }]);
    let cfg = prefix_router::config::Config::default_routing().expect("default flags");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    Router::new(registry, Arc::new(LocalTokenizer::new(4, None)), cfg, metrics)
}

fn body(tokens: usize, family: u32, variant: u32) -> Vec<u8> {
    // Prompts of one family share their first half; variants differ after it.
    let ids: Vec<u32> = (0..tokens as u32)
        .map(|i| if (i as usize) < tokens / 2 { family * 100_000 + i } else { variant * 7 + i })
        .collect();
    serde_json::json!({"model": "m", "prompt": ids}).to_string().into_bytes()
}

/// 4 prompt families per pod already routed, so lookups walk real holders.
fn warm(r: &Router, rt: &tokio::runtime::Runtime, tokens: usize, pods: usize) {
    for f in 0..(pods * 4) as u32 {
        let req = openai::parse(Endpoint::Completions, &body(tokens, f, f)).expect("parses");
        drop(rt.block_on(r.route(&req)));
    }
}

type Parse = fn(Endpoint, &[u8]) -> Result<openai::InferenceRequest, openai::ParseError>;

fn decide(r: &Router, rt: &tokio::runtime::Runtime, body: &[u8], parse: Parse) {
    let req = parse(Endpoint::Completions, body).expect("parses");
    let d = rt.block_on(r.route(&req)).expect("routed");
    std::hint::black_box(d.destination());
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut c = Criterion::default().measurement_time(Duration::from_secs(2)).sample_size(30).configure_from_args();
    let cases: Vec<(usize, usize)> = [1024, 8192, 32768].iter().flat_map(|&t| [8, 64].map(|p| (t, p))).collect();
    let mut table = Vec::new();
    {
        let mut group = c.benchmark_group("decision");
        for &(tokens, pods) in &cases {
            let r = router(pods);
            warm(&r, &rt, tokens, pods);
            let probe = body(tokens, 3, 999_999);
            group.bench_with_input(
                BenchmarkId::new(format!("{tokens}tok"), format!("{pods}pods")),
                &probe,
                |b, probe| b.iter(|| decide(&r, &rt, probe, openai::parse)),
            );
            // The same decisions with the ordinary (all-serde) parse, interleaved so both see the
            // same machine.
            let (mut fast, mut ordinary) = (Vec::new(), Vec::new());
            for _ in 0..2000 {
                for (parse, times) in [(openai::parse as Parse, &mut fast), (openai::parse_ordinary, &mut ordinary)] {
                    let t = Instant::now();
                    decide(&r, &rt, &probe, parse);
                    times.push(t.elapsed());
                }
            }
            fast.sort();
            ordinary.sort();
            table.push((tokens, pods, fast[1000], fast[1980], ordinary[1980]));
        }
        group.finish();
    }

    // The body parse alone: the token-id reader against the ordinary (all-serde) parse.
    {
        let mut group = c.benchmark_group("parse");
        for tokens in [1024usize, 8192, 32768] {
            let probe = body(tokens, 3, 999_999);
            for (name, parse) in [("token_id_reader", openai::parse as Parse), ("ordinary", openai::parse_ordinary)] {
                group.bench_with_input(BenchmarkId::new(name, format!("{tokens}tok")), &probe, |b, probe| {
                    b.iter(|| std::hint::black_box(parse(Endpoint::Completions, probe).map(|r| r.stream)));
                });
            }
        }
        group.finish();
    }

    let tok = HfTokenizer::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/qwen3"))
        .expect("fixture");
    let mut tok_table = Vec::new();
    {
        let mut group = c.benchmark_group("local_tokenize");
        for tokens in [1024usize, 8192, 32768] {
            let mut text = String::new();
            let mut k = 0;
            while tok.encode(&text, true).map_or(0, |t| t.len()) < tokens {
                text.push_str(&(0..64).map(|i| format!("Clause {k}.{i} on block reuse. ")).collect::<String>());
                k += 1;
            }
            group.bench_with_input(BenchmarkId::from_parameter(format!("{tokens}tok")), &text, |b, text| {
                b.iter(|| std::hint::black_box(tok.encode(text, true).map(|t| t.len())));
            });
            let t = Instant::now();
            let n = 20;
            for _ in 0..n {
                std::hint::black_box(tok.encode(&text, true).map_or(0, |t| t.len()));
            }
            tok_table.push((tokens, t.elapsed() / n));
        }
        group.finish();
    }
    println!("\n| prompt tokens | pods | decision p50 | decision p99 | p99 with the ordinary parse |");
    println!("|---:|---:|---:|---:|---:|");
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for (tokens, pods, p50, p99, ordinary) in table {
        println!("| {tokens} | {pods} | {:.1} µs | {:.1} µs | {:.1} µs |", us(p50), us(p99), us(ordinary));
    }
    println!("\n| prompt tokens | local tokenization (mean of 20) |");
    println!("|---:|---:|");
    for (tokens, mean) in tok_table {
        println!("| ~{tokens} | {:.2} ms |", mean.as_secs_f64() * 1e3);
    }
}
