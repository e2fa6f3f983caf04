//! vllm-sim's prefix cache and scheduler, observed the way a router or benchmark observes them:
//! `usage.prompt_tokens_details.cached_tokens`, `vllm:` metrics and time to first token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{client, metric, procs};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn metrics(sim: &procs::Proc) -> String {
    client().get(sim.url("/metrics")).send().await.expect("metrics").text().await.expect("text")
}

/// Exactly `n` real token ids from text, so block arithmetic is exact.
async fn prompt_ids(sim: &procs::Proc, topic: &str, n: usize) -> Vec<u64> {
    let text: String = (0..n).map(|i| format!("{topic} sentence {i} about caching. ")).collect();
    let body = common::post_json(&sim.url("/tokenize"), &json!({"prompt": text})).await;
    let ids: Vec<u64> = serde_json::from_value(body["tokens"].clone()).expect("ids");
    assert!(ids.len() >= n);
    ids[..n].to_vec()
}

/// Streams one completion; returns (time to first token, cached tokens).
async fn complete(sim: &procs::Proc, prompt: &[u64]) -> (Duration, u64) {
    let req = json!({"model": "tiny-chat", "prompt": prompt, "max_tokens": 2, "stream": true,
        "stream_options": {"include_usage": true}});
    let start = Instant::now();
    let mut res = client().post(sim.url("/v1/completions")).json(&req).send().await.expect("request");
    assert_eq!(res.status(), 200);
    let mut ttft = None;
    let mut text = String::new();
    while let Some(chunk) = res.chunk().await.expect("chunk") {
        ttft.get_or_insert_with(|| start.elapsed());
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let usage_line = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find(|c| c.get("usage").is_some())
        .expect("usage chunk");
    (
        ttft.expect("a first chunk"),
        usage_line["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().expect("cached"),
    )
}

#[tokio::test]
async fn a_repeated_prompt_hits_its_blocks_until_other_prompts_evict_them() {
    // 2,000 tokens at 200 µs each: 0.4 s of prefill uncached, ~3 ms cached.
    let sim = procs::sim(&["--num-gpu-blocks", "300", "--prefill-us-per-token", "200", "--decode-ms-per-token", "0"]);
    let first = prompt_ids(&sim, "alpha", 2000).await;

    let (cold_ttft, cold_cached) = complete(&sim, &first).await;
    assert_eq!(cold_cached, 0);
    let hits_before = metric(&metrics(&sim).await, "vllm:prefix_cache_hits_total");
    let (warm_ttft, warm_cached) = complete(&sim, &first).await;
    assert!(warm_cached >= 1984, "every full block but the recomputed last: {warm_cached}");
    let hits_after = metric(&metrics(&sim).await, "vllm:prefix_cache_hits_total");
    assert_eq!(hits_after - hits_before, warm_cached as f64);
    assert!(
        warm_ttft + Duration::from_millis(300) < cold_ttft,
        "cached prefill must be shorter by the model: cold {cold_ttft:?}, warm {warm_ttft:?}"
    );

    // 300 blocks hold 4,800 tokens: three other 2,000-token prompts push the first one out.
    for topic in ["beta", "gamma", "delta"] {
        let other = prompt_ids(&sim, topic, 2000).await;
        complete(&sim, &other).await;
    }
    let (_, evicted) = complete(&sim, &first).await;
    assert_eq!(evicted, 0, "the first prompt's blocks were evicted");
    let text = metrics(&sim).await;
    assert!(
        text.contains(r#"vllm:cache_config_info{block_size="16",enable_prefix_caching="True",hash_block_size="16",model_name="tiny-chat",num_gpu_blocks="300",prefix_caching_hash_algo="sha256_cbor"} 1"#),
        "{text}"
    );
    assert!(metric(&text, "vllm:prefix_cache_queries_total") >= 12000.0);
}

#[tokio::test]
async fn requests_beyond_max_num_seqs_wait() {
    let sim = procs::sim(&["--max-num-seqs", "2", "--decode-ms-per-token", "40"]);
    let mut calls = Vec::new();
    for i in 0..5 {
        let url = sim.url("/v1/completions");
        calls.push(tokio::spawn(async move {
            let res =
                client().post(url).json(&json!({"prompt": format!("request {i}"), "max_tokens": 15})).send().await;
            let res = res.expect("answered");
            let status = res.status();
            res.text().await.expect("body read to the end");
            status
        }));
    }
    let mut seen = (0.0, 0.0);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let text = metrics(&sim).await;
        let now = (metric(&text, "vllm:num_requests_running"), metric(&text, "vllm:num_requests_waiting"));
        if now == (2.0, 3.0) {
            seen = now;
            break;
        }
    }
    assert_eq!(seen, (2.0, 3.0), "two running, three waiting");
    for c in calls {
        assert_eq!(c.await.expect("joined"), 200);
    }
    let text = metrics(&sim).await;
    assert_eq!((metric(&text, "vllm:num_requests_running"), metric(&text, "vllm:num_requests_waiting")), (0.0, 0.0));
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_frees_its_slot() {
    let sim = procs::sim(&["--max-num-seqs", "1", "--decode-ms-per-token", "50"]);
    let req = json!({"prompt": "long story", "max_tokens": 1000, "stream": true});
    let mut res = client().post(sim.url("/v1/completions")).json(&req).send().await.expect("request");
    res.chunk().await.expect("first chunk");
    assert_eq!(metric(&metrics(&sim).await, "vllm:num_requests_running"), 1.0);
    drop(res);
    let mut running = 1.0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        running = metric(&metrics(&sim).await, "vllm:num_requests_running");
        if running == 0.0 {
            break;
        }
    }
    assert_eq!(running, 0.0);
    let ok = client().post(sim.url("/v1/completions")).json(&json!({"prompt": "next", "max_tokens": 1})).send().await;
    assert_eq!(ok.expect("served").status(), 200);
}

#[tokio::test]
async fn the_prefix_probe_counts_blocks_being_computed_as_coming_not_cached() {
    // 2,000 tokens at 500 µs each: one second of prefill to look into.
    let sim = procs::sim(&["--prefill-us-per-token", "500", "--decode-ms-per-token", "0"]);
    let prompt = prompt_ids(&sim, "epsilon", 2000).await;
    let probe = || async {
        let v: Value = client()
            .post(sim.url("/sim/prefix"))
            .json(&json!({"model": "tiny-chat", "prompt": prompt.clone()}))
            .send()
            .await
            .expect("probe")
            .json()
            .await
            .expect("json");
        (v["prompt_tokens"].as_u64(), v["cached_tokens"].as_u64(), v["cached_or_coming_tokens"].as_u64())
    };
    assert_eq!(probe().await, (Some(2000), Some(0), Some(0)));

    let running = tokio::spawn({
        let (sim_url, prompt) = (sim.url("/v1/completions"), prompt.clone());
        async move {
            let req = json!({"model": "tiny-chat", "prompt": prompt, "max_tokens": 1});
            client().post(sim_url).json(&req).send().await.expect("request").status()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(probe().await, (Some(2000), Some(0), Some(2000)), "mid-prefill: coming, not yet cached");
    assert_eq!(running.await.expect("task"), 200);
    assert_eq!(probe().await, (Some(2000), Some(2000), Some(2000)), "after prefill: cached");
}
