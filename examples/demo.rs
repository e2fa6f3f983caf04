//! The demo on the embedded default: three `vllm-sim` pods (8001–8003), the router (9002, admin
//! 9090) on `examples/endpoints.yaml`, and a real Envoy (10000). It sends interleaved multi-turn
//! conversations through Envoy and prints where each turn landed, how much of it the pod had
//! cached, and the sims' prefix-cache hit rate.
//!
//! Run it with `bash examples/demo.sh` (installs Envoy, builds, runs). Flags:
//! `--mode buffered|full-duplex` (default full-duplex), `--policy prefix|round-robin|random|least-load`,
//! `--conversations N`, `--turns N`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_owned())
}

fn spawn(bin: &Path, args: &[&str]) -> Result<Kill, String> {
    Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Kill)
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))
}

async fn wait_for(url: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if reqwest::get(url).await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{url} did not come up (is the port free?)"))
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn question(conv: usize, turn: usize) -> String {
    let topics = ["tides", "compilers", "bread", "glaciers", "violins", "satellites", "honeybees", "bridges"];
    let topic = topics[conv % topics.len()];
    (0..8)
        .map(|i| {
            format!(
                "About {topic} (conversation {conv}), question {turn}.{i}: what happens next and why does it matter? "
            )
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bins = std::env::current_exe().map_err(|e| e.to_string())?;
    let bins = bins.parent().and_then(Path::parent).ok_or("cannot find the build directory")?.to_path_buf();
    let envoy = std::env::var("ENVOY_BIN").map_err(|_| "set ENVOY_BIN (examples/demo.sh does)".to_owned())?;
    let mode = arg("--mode", "full-duplex");
    let policy = arg("--policy", "prefix");
    let conversations: usize = arg("--conversations", "8").parse().map_err(|_| "--conversations: a number")?;
    let turns: usize = arg("--turns", "4").parse().map_err(|_| "--turns: a number")?;
    let tokenizer = repo.join("../shared/fixtures/qwen3");
    let tokenizer = tokenizer.to_str().ok_or("non-UTF-8 path")?;

    let mut children = Vec::new();
    for port in ["8001", "8002", "8003"] {
        let id = format!("sim-{port}");
        let args = ["--port", port, "--model", "tiny-chat", "--tokenizer", tokenizer, "--id", &id];
        children.push(spawn(&bins.join("vllm-sim"), &args)?);
    }
    let endpoints = repo.join("examples/endpoints.yaml");
    let endpoints = endpoints.to_str().ok_or("non-UTF-8 path")?;
    children.push(spawn(
        &bins.join("prefix-router"),
        &["--host", "127.0.0.1", "--endpoints-file", endpoints, "--policy", &policy],
    )?);
    let bootstrap = repo.join(format!("examples/envoy-{mode}.yaml"));
    let bootstrap = bootstrap.to_str().ok_or("non-UTF-8 path")?;
    children.push(spawn(Path::new(&envoy), &["-c", bootstrap, "--concurrency", "1", "--disable-hot-restart"])?);
    for url in ["http://127.0.0.1:8001/health", "http://127.0.0.1:8002/health", "http://127.0.0.1:8003/health"] {
        wait_for(url).await?;
    }
    wait_for("http://127.0.0.1:9090/readyz").await?;
    wait_for("http://127.0.0.1:9901/ready").await?;
    println!("demo: 3 vllm-sim pods, prefix-router (--policy {policy}), Envoy ({mode}) on :10000\n");

    let http = reqwest::Client::new();
    let mut history: Vec<Vec<Value>> = vec![Vec::new(); conversations];
    let mut first_pod: Vec<String> = vec![String::new(); conversations];
    let (mut later, mut stayed) = (0, 0);
    println!("{:<6} {:<5} {:<9} {:>14}", "conv", "turn", "pod", "cached/prompt");
    for turn in 0..turns {
        // Interleaved: every conversation's turn N before any turn N+1, as a busy service sees them.
        for (conv, messages) in history.iter_mut().enumerate() {
            messages.push(json!({"role": "user", "content": question(conv, turn)}));
            let res = http
                .post("http://127.0.0.1:10000/v1/chat/completions")
                .json(&json!({"model": "tiny-chat", "messages": messages, "max_tokens": 12}))
                .send()
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let pod = res.headers().get("x-sim-id").and_then(|v| v.to_str().ok()).unwrap_or("?").to_owned();
            let body: Value = res.json().await.map_err(|e| format!("bad response: {e}"))?;
            let usage = &body["usage"];
            println!(
                "{conv:<6} {turn:<5} {pod:<9} {:>6}/{:<7}",
                usage["prompt_tokens_details"]["cached_tokens"], usage["prompt_tokens"]
            );
            if turn == 0 {
                first_pod[conv] = pod;
            } else {
                later += 1;
                stayed += usize::from(pod == first_pod[conv]);
            }
            messages.push(json!({"role": "assistant", "content": body["choices"][0]["message"]["content"]}));
        }
    }
    println!("\nlater turns on their conversation's first pod: {stayed}/{later}");
    let (mut hits, mut queries) = (0.0, 0.0);
    for port in [8001, 8002, 8003] {
        let text = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let (h, q) = (metric(&text, "vllm:prefix_cache_hits_total"), metric(&text, "vllm:prefix_cache_queries_total"));
        println!("sim-{port}: prefix-cache hit rate {:5.1}% ({h} of {q} prompt tokens)", 100.0 * h / q.max(1.0));
        hits += h;
        queries += q;
    }
    println!("all pods: prefix-cache hit rate {:5.1}%", 100.0 * hits / queries.max(1.0));
    drop(children);
    Ok(())
}
