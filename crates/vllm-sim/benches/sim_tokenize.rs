//! Load harness: vllm-sim's `/tokenize` throughput for 1k-token prompts, side by side with the
//! `tokenizers` crate's raw encode rate on the same prompts, in one run.
//!
//! `cargo bench --bench sim_tokenize` (env: SECONDS=5 per phase, CONCURRENCY=4).
//! "per core" = requests per CPU-second the sim process used (read from /proc), so the client's
//! own CPU on this 2-core machine does not count against the server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hf_chat::HfTokenizer;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn prompts(tok: &HfTokenizer, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let mut text = String::new();
            let mut k = 0;
            while tok.encode(&text, true).map_or(0, |t| t.len()) < 1000 {
                text.push_str(&format!("Request {i} clause {k}: the router hashes blocks of tokens. "));
                k += 1;
            }
            text
        })
        .collect()
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

fn main() {
    let secs: u64 = std::env::var("SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let concurrency: usize = std::env::var("CONCURRENCY").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/qwen3");
    let tok = HfTokenizer::from_dir(&dir).expect("fixture tokenizer");
    let prompts = Arc::new(prompts(&tok, 64));
    let tokens: usize =
        prompts.iter().map(|p| tok.encode(p, true).map_or(0, |t| t.len())).sum::<usize>() / prompts.len();

    // Raw encode, one thread.
    let start = Instant::now();
    let mut raw = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let _ = tok.encode(&prompts[raw as usize % prompts.len()], true);
        raw += 1;
    }
    let raw_rate = raw as f64 / start.elapsed().as_secs_f64();

    // The sim, over HTTP with keep-alive.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vllm-sim"))
        .args(["--port", "0", "--model", "m", "--tokenizer"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start vllm-sim");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    std::io::BufRead::read_line(&mut out, &mut line).expect("address line");
    let url = format!("{}/tokenize", line.trim().rsplit_once(' ').map(|(_, u)| u).expect("url"));
    let pid = child.id();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let done = Arc::new(AtomicU64::new(0));
    let (elapsed, cpu) = rt.block_on(async {
        let client = reqwest::Client::new();
        // Warm the connection pool and the sim.
        for p in prompts.iter().take(4) {
            let _ = client.post(&url).json(&serde_json::json!({"prompt": p})).send().await;
        }
        let cpu0 = cpu_seconds(pid);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(secs);
        let tasks: Vec<_> = (0..concurrency)
            .map(|w| {
                let (client, url, prompts, done) =
                    (client.clone(), url.clone(), Arc::clone(&prompts), Arc::clone(&done));
                tokio::spawn(async move {
                    let mut i = w;
                    while Instant::now() < deadline {
                        let body = serde_json::json!({"model": "m", "prompt": prompts[i % prompts.len()]});
                        let res = client.post(&url).json(&body).send().await.expect("tokenize call");
                        assert!(res.status().is_success());
                        let _ = res.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                        i += concurrency;
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        (start.elapsed().as_secs_f64(), cpu_seconds(pid) - cpu0)
    });
    let _ = child.kill();
    let _ = child.wait();
    let n = done.load(Ordering::Relaxed) as f64;
    let wall_rate = n / elapsed;
    let per_core = if cpu > 0.0 { n / cpu } else { f64::NAN };
    println!("prompt tokens (mean): {tokens}; {secs} s per phase; {concurrency} concurrent HTTP clients");
    println!("| measure | per second |");
    println!("|---|---:|");
    println!("| raw `tokenizers` encode, 1 thread | {raw_rate:.0} |");
    println!("| vllm-sim /tokenize, wall clock (server + client share 2 cores) | {wall_rate:.0} |");
    println!("| vllm-sim /tokenize per sim CPU-second ({cpu:.2} s CPU) | {per_core:.0} |");
    println!("| ratio per core (sim / raw) | {:.2} |", per_core / raw_rate);
}
