//! KV-event ingestion: how many events one core decodes and applies per second, and what the event
//! index costs in memory per cached block. Batches are built as vLLM 0.33 sends them (msgpack maps),
//! each a `BlockStored` of 8 blocks of 16 tokens chained on the previous batch, with a `BlockRemoved`
//! every fourth batch.
//!
//! `cargo bench --bench kv_events` (env `EVENTS`, default 200,000 batches; `BLOCKS`, default 1,000,000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use prefix_index::{Blocks, EventIndex, HashSeed, Medium, PodId};
use prefix_router::discovery::{EndpointSpec, Engine, ModelSpec, Registry};
use prefix_router::kv_events::decode;
use prefix_router::metrics::Metrics;
use prefix_router::routing::Router;
use rmpv::Value;
use std::sync::Arc;
use std::time::Instant;

fn s(x: &str) -> Value {
    Value::from(x)
}

/// Batch `i` of a pod: 8 blocks chained after batch `i - 1`'s last (a new sequence every 64 batches).
fn batch(i: u64) -> Vec<u8> {
    let first = i * 8;
    let parent = if i % 64 == 0 { Value::Nil } else { Value::from(first - 1) };
    let stored = Value::Map(vec![
        (s("type"), s("BlockStored")),
        (s("block_hashes"), Value::Array((first..first + 8).map(Value::from).collect())),
        (s("parent_block_hash"), parent),
        (s("token_ids"), Value::Array((0..128u64).map(|t| Value::from((i * 131 + t) % 150_000)).collect())),
        (s("block_size"), Value::from(16)),
        (s("lora_id"), Value::Nil),
        (s("medium"), s("GPU")),
        (s("lora_name"), Value::Nil),
    ]);
    let mut events = vec![stored];
    if i % 4 == 3 && i >= 64 {
        events.push(Value::Map(vec![
            (s("type"), s("BlockRemoved")),
            (s("block_hashes"), Value::Array(vec![Value::from((i - 64) * 8)])),
            (s("medium"), s("GPU")),
        ]));
    }
    let b = Value::Array(vec![Value::F64(1.0), Value::Array(events), Value::from(0)]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &b).expect("encode");
    out
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn main() {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let n = env("EVENTS", 200_000) as u64;
    let payloads: Vec<Vec<u8>> = (0..n).map(batch).collect();
    let events: usize = payloads.iter().map(|p| decode::batch(p).expect("decodes").changes.len()).sum();

    let t = Instant::now();
    let mut changes = 0;
    for p in &payloads {
        changes += decode::batch(p).expect("decodes").changes.len();
    }
    let decode_s = t.elapsed().as_secs_f64();
    assert_eq!(changes, events);

    let registry = Arc::new(Registry::new());
    registry.publish(vec![ModelSpec {
        name: "m".into(),
        tokenizer: None,
        endpoints: vec![EndpointSpec {
            key: "m/pod".into(),
            addr: "127.0.0.1:1".parse().expect("addr"),
            engine: Engine::Vllm,
        }],
    }]);
    let pod = registry.snapshot().models["m"].endpoints[0].id;
    struct NoTokens;
    impl prefix_router::tokenizer::Tokenize for NoTokens {
        fn tokenize<'a>(
            &'a self,
            _: &'a Arc<prefix_router::discovery::Model>,
            _: &'a prefix_router::openai::InferenceRequest,
        ) -> futures::future::BoxFuture<
            'a,
            Result<prefix_router::tokenizer::Tokens, prefix_router::tokenizer::TokenizeError>,
        > {
            Box::pin(async { Err(prefix_router::tokenizer::TokenizeError::Unavailable) })
        }
    }
    let cfg = prefix_router::config::Config::default_routing().expect("default flags");
    let router = Router::new(registry, Arc::new(NoTokens), cfg, Arc::new(Metrics::new().expect("metrics")));
    let t = Instant::now();
    for p in &payloads {
        let b = decode::batch(p).expect("decodes");
        router.apply_events("m", pod, &b.changes);
    }
    let apply_s = t.elapsed().as_secs_f64();
    let blocks_stored = n * 8;

    // Memory: one pod's index holding `BLOCKS` blocks, measured as the process's resident growth.
    let target = env("BLOCKS", 1_000_000);
    let before = rss_bytes();
    let mut idx = EventIndex::new();
    let tokens: Vec<u32> = (0..16 * 64).map(|t| t % 150_000).collect();
    let seed = HashSeed::new("m", None, 0x0e0e);
    let mut stored = 0usize;
    let mut seq = 0u64;
    while stored < target {
        let hashes: Vec<u64> = (0..64).map(|k| seq * 64 + k).collect();
        // A distinct first token per sequence so own hashes do not collide.
        let mut toks = tokens.clone();
        toks[0] = (seq % 150_000) as u32;
        toks[1] = (seq / 150_000) as u32;
        let blocks =
            Blocks { parent: None, engine_hashes: &hashes, token_ids: &toks, block_size: 16, medium: Medium::Gpu };
        stored += idx.store(PodId(1 + (seq % 8) as u32), &blocks, seed).expect("stored");
        seq += 1;
    }
    let after = rss_bytes();
    assert_eq!(idx.len(), stored);

    println!("KV-event ingestion, one thread ({n} batches, {events} events, {blocks_stored} blocks stored):");
    println!("| step | events/s | blocks stored/s |");
    println!("|---|---:|---:|");
    println!("| decode | {:.0} | {:.0} |", events as f64 / decode_s, blocks_stored as f64 / decode_s);
    println!(
        "| decode + apply to the index | {:.0} | {:.0} |",
        events as f64 / apply_s,
        blocks_stored as f64 / apply_s
    );
    println!(
        "\nevent index memory: {stored} blocks over 8 pods: {:.1} MiB resident growth = {:.0} bytes per block ({:.0} MiB per 1 M blocks)",
        (after.saturating_sub(before)) as f64 / (1 << 20) as f64,
        (after.saturating_sub(before)) as f64 / stored as f64,
        (after.saturating_sub(before)) as f64 / stored as f64 * 1e6 / (1 << 20) as f64
    );
}
