//! Load and soak harness for the whole path on loopback: four `vllm-sim` pods, the router (release
//! build, local tokenizer, defaults), and a real Envoy from `examples/envoy-full-duplex.yaml`.
//! Three phases, each printing a table row:
//! 1. **streams**: `STREAMS` (5,000) concurrent streaming chats opened over `RAMP_SECS` (5) and
//!    held while the sims generate: error rate, peak open streams, router RSS and CPU.
//! 2. **soak**: `SOAK_SECS` (600) of mixed traffic at `RATE` (40) req/s — multi-turn chats, long
//!    completions, streams the client abandons, invalid JSON (must get 400), unknown models (must
//!    get 404): unexpected answers, and router RSS sampled every 10 s, growth measured from the end
//!    of the first minute.
//! 3. **spike**: 16 concurrent 6 MB prompts while small chats keep coming: every small chat must be
//!    routed; router RSS at the peak and 10 s later.
//!
//! `cargo build --release --workspace --bins && cargo bench --bench load_soak`
//! (`PHASES=streams,soak,spike` picks phases; `SOAK_SECS=60` for a short look).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/bins.rs"]
mod bins;
#[path = "../tests/common/bootstrap.rs"]
mod bootstrap;
#[path = "support/procs.rs"]
mod procs;

use procs::{cpu_seconds, free_port, rss, start, wait_port, Kill};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Every child inherits the limit: 5,000 streams are 10,000+ sockets across client and Envoy.
fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(1 << 20) {
        eprintln!("could not raise the open-file limit: {e}");
    }
}

struct Stack {
    _sims: Vec<Kill>,
    router: Kill,
    admin: String,
    _envoy: Kill,
    url: String,
}

async fn stack() -> Stack {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tok = repo.join("../shared/fixtures/qwen3").to_str().expect("utf-8").to_owned();
    let mut sims = Vec::new();
    let mut pods: Vec<SocketAddr> = Vec::new();
    for i in 0..4 {
        let id = format!("sim-{i}");
        let (k, line) = start(
            bins::vllm_sim().to_str().expect("utf-8"),
            &[
                "--port",
                "0",
                "--model",
                "m",
                "--tokenizer",
                &tok,
                "--id",
                &id,
                "--max-num-seqs",
                "4096",
                "--decode-ms-per-token",
                "200",
            ],
        );
        pods.push(line.trim().rsplit_once("http://").and_then(|(_, a)| a.parse().ok()).expect("sim address"));
        sims.push(k);
    }
    let dir = std::env::temp_dir().join(format!("load-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("endpoints.yaml");
    let eps: Vec<String> = pods.iter().map(|a| format!("\"{a}\"")).collect();
    std::fs::write(&file, format!("models:\n  - name: m\n    tokenizer: {tok}\n    endpoints: [{}]\n", eps.join(", ")))
        .expect("write endpoints");
    let (router, line) = start(
        env!("CARGO_BIN_EXE_prefix-router"),
        &["--host", "127.0.0.1", "--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", "0"]
            .into_iter()
            .chain(["--endpoints-file", file.to_str().expect("utf-8")])
            .collect::<Vec<_>>(),
    );
    let grpc: SocketAddr = procs::field(&line, "grpc=").parse().expect("grpc address");
    let admin = procs::field(&line, "admin=");
    let port = free_port();
    let example = std::fs::read_to_string(repo.join("examples/envoy-full-duplex.yaml")).expect("example");
    let envoy = procs::envoy(&bootstrap::rewrite(&example, port, free_port(), &[grpc.port()], &pods), 2);
    wait_port(port).await;
    Stack { _sims: sims, router, admin, _envoy: envoy, url: format!("http://127.0.0.1:{port}") }
}

/// What a request expects back.
#[derive(Clone, Copy)]
enum Expect {
    /// 200 and, for a stream, the final `[DONE]`.
    Ok,
    /// The router's own error status.
    Status(u16),
    /// The client walks away after the first chunk: any 200 start is fine.
    Abandon,
}

async fn send(http: &reqwest::Client, url: &str, body: String, expect: Expect) -> Result<(), String> {
    let res = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("transport: {}", if e.is_timeout() { "timeout" } else { "error" }))?;
    let status = res.status().as_u16();
    match expect {
        Expect::Status(want) if status == want => Ok(()),
        Expect::Status(_) => Err(format!("status {status}")),
        Expect::Abandon if status == 200 => Ok(()),
        Expect::Ok | Expect::Abandon if status != 200 => Err(format!("status {status}")),
        _ => {
            let text = res.text().await.map_err(|_| "body cut".to_owned())?;
            if text.starts_with("data:") && !text.contains("[DONE]") {
                return Err("stream without [DONE]".into());
            }
            Ok(())
        }
    }
}

#[derive(Default)]
struct Tally {
    ok: usize,
    errors: BTreeMap<String, usize>,
}

impl Tally {
    fn add(&mut self, r: Result<(), String>) {
        match r {
            Ok(()) => self.ok += 1,
            Err(e) => *self.errors.entry(e).or_default() += 1,
        }
    }
    fn total(&self) -> usize {
        self.ok + self.errors.values().sum::<usize>()
    }
    fn failed(&self) -> usize {
        self.errors.values().sum()
    }
    fn summary(&self) -> String {
        if self.errors.is_empty() {
            return "none".into();
        }
        self.errors.iter().map(|(k, v)| format!("{v}× {k}")).collect::<Vec<_>>().join(", ")
    }
}

fn words(seed: usize, n: usize) -> String {
    const W: &[&str] = &["cache", "block", "prefix", "router", "engine", "token", "stream", "model", "pod", "query"];
    (0..n).map(|i| W[(seed * 7 + i * 13 + i / 5) % W.len()]).collect::<Vec<_>>().join(" ")
}

async fn phase_streams(s: &Stack, http: &reqwest::Client) -> String {
    let (n, ramp) = (env_or("STREAMS", 5000) as usize, env_or("RAMP_SECS", 5));
    let pid = s.router.pid();
    let cpu0 = cpu_seconds(pid);
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    let system = words(1, 300);
    for i in 0..n {
        let at = started + Duration::from_micros(ramp * 1_000_000 * i as u64 / n as u64);
        let body = json!({"model": "m", "stream": true, "max_tokens": 24,
            "messages": [{"role": "system", "content": format!("group {} {system}", i % 32)},
                         {"role": "user", "content": format!("question {i}: {}", words(i, 20))}]})
        .to_string();
        let (http, url, open, peak, tally) =
            (http.clone(), format!("{}/v1/chat/completions", s.url), open.clone(), peak.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let now = open.fetch_add(1, Ordering::AcqRel) + 1;
            peak.fetch_max(now, Ordering::AcqRel);
            let r = send(&http, &url, body, Expect::Ok).await;
            open.fetch_sub(1, Ordering::AcqRel);
            tally.lock().unwrap().add(r);
        }));
    }
    let mut rss_peak = 0;
    let mut sampler = tokio::time::interval(Duration::from_millis(200));
    while tasks.iter().any(|t| !t.is_finished()) {
        sampler.tick().await;
        rss_peak = rss_peak.max(rss(pid).0);
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let t = tally.lock().unwrap();
    format!(
        "| streams | {} streaming chats opened over {ramp} s, peak {} open at once | {:.1} s | {} ({:.3}%): {} | {} | {:.1} s ({:.0}% of a core) |",
        t.total(),
        peak.load(Ordering::Acquire),
        secs,
        t.failed(),
        100.0 * t.failed() as f64 / t.total().max(1) as f64,
        t.summary(),
        mib(rss_peak),
        cpu,
        100.0 * cpu / secs
    )
}

/// The soak's traffic mix, request `i`.
fn soak_request(i: usize, convs: &mut [usize]) -> (&'static str, String, Expect) {
    match i % 20 {
        0 => ("/v1/chat/completions", "{\"model\": \"m\", \"messages\": [".into(), Expect::Status(400)),
        1 => ("/v1/completions", json!({"model": "nope", "prompt": "hi"}).to_string(), Expect::Status(404)),
        2 | 3 => {
            let body = json!({"model": "m", "stream": true, "max_tokens": 64,
                "messages": [{"role": "user", "content": words(i, 40)}]});
            ("/v1/chat/completions", body.to_string(), Expect::Abandon)
        }
        4..=7 => {
            let body = json!({"model": "m", "max_tokens": 4, "prompt": format!("{} {}", words(i % 50, 1500), i)});
            ("/v1/completions", body.to_string(), Expect::Ok)
        }
        _ => {
            let c = (i * 31) % convs.len();
            convs[c] = (convs[c] + 1) % 8;
            let mut messages = vec![json!({"role": "system", "content": words(c % 8, 200)})];
            for turn in 0..=convs[c] {
                messages.push(json!({"role": "user", "content": format!("conversation {c} turn {turn}: {}", words(c + turn, 30))}));
                messages.push(json!({"role": "assistant", "content": words(turn, 12)}));
            }
            messages.pop();
            let body = json!({"model": "m", "max_tokens": 8, "messages": messages});
            ("/v1/chat/completions", body.to_string(), Expect::Ok)
        }
    }
}

async fn phase_soak(s: &Stack, http: &reqwest::Client) -> (String, String) {
    let (secs, rate) = (env_or("SOAK_SECS", 600), env_or("RATE", 40));
    let pid = s.router.pid();
    let cpu0 = cpu_seconds(pid);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let mut convs = vec![0usize; 200];
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut samples: Vec<(u64, u64)> = vec![(0, rss(pid).0)];
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let (path, body, expect) = soak_request(i, &mut convs);
        let (http, url, tally) = (http.clone(), format!("{}{path}", s.url), tally.clone());
        tasks.spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(30), send(&http, &url, body, expect)).await;
            tally.lock().unwrap().add(r.unwrap_or_else(|_| Err("client timeout (30 s)".into())));
        });
        while tasks.try_join_next().is_some() {}
        i += 1;
        let t = started.elapsed().as_secs();
        if t >= samples.last().map_or(0, |s| s.0) + 10 {
            samples.push((t, rss(pid).0));
        }
    }
    while tasks.join_next().await.is_some() {}
    let cpu = cpu_seconds(pid) - cpu0;
    // The first minutes fill bounded caches (the 64 MiB token cache, the prefix index): growth is
    // given from the first minute and from the first 30% of the run on.
    let at = |from: u64| samples.iter().find(|s| s.0 >= from).or(samples.last()).copied().unwrap_or((0, 1));
    let (early, settled) = (at(60), at(secs * 3 / 10));
    let end = samples.last().copied().unwrap_or(early);
    let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let growth = |from: (u64, u64)| 100.0 * (end.1 as f64 - from.1 as f64) / from.1.max(1) as f64;
    let t = tally.lock().unwrap();
    let row = format!(
        "| soak | {} requests at {rate}/s over {secs} s (chats, 1.5k-token completions, abandoned streams, 5% invalid JSON, 5% unknown model) | {:.0} s | {} ({:.3}%): {} | {} at {} s, {} at {} s, {} at the end (max {}): **{:+.1}%** from {} s, {:+.1}% from {} s | {:.1} s ({:.0}% of a core) |",
        t.total(),
        started.elapsed().as_secs_f64(),
        t.failed(),
        100.0 * t.failed() as f64 / t.total().max(1) as f64,
        t.summary(),
        mib(early.1),
        early.0,
        mib(settled.1),
        settled.0,
        mib(end.1),
        mib(max),
        growth(settled),
        settled.0,
        growth(early),
        early.0,
        cpu,
        100.0 * cpu / secs as f64
    );
    let series = samples.iter().map(|(t, b)| format!("{t}s {:.0}", *b as f64 / (1 << 20) as f64)).collect::<Vec<_>>();
    (row, format!("RSS (MiB) every 10 s: {}", series.join(", ")))
}

async fn phase_spike(s: &Stack, http: &reqwest::Client) -> String {
    let pid = s.router.pid();
    let before = rss(pid).0;
    let big: Vec<String> = (0..16)
        .map(|k| {
            let mut p = format!("spike {k} ");
            while p.len() < 6 << 20 {
                p.push_str(&words(p.len() + k, 64));
                p.push(' ');
            }
            json!({"model": "m", "max_tokens": 1, "prompt": p}).to_string()
        })
        .collect();
    let big_tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let mut bigs = tokio::task::JoinSet::new();
    for body in big {
        let (http, url, tally) = (http.clone(), format!("{}/v1/completions", s.url), big_tally.clone());
        bigs.spawn(async move {
            // Routed means the pod answered (the sim may refuse a prompt past its context length).
            let r = match http.post(&url).header("content-type", "application/json").body(body).send().await {
                Ok(res) if res.headers().contains_key("x-sim-id") => Ok(()),
                Ok(res) => Err(format!("status {} not from a pod", res.status().as_u16())),
                Err(_) => Err("transport error".into()),
            };
            tally.lock().unwrap().add(r);
        });
    }
    let small = Arc::new(Mutex::new(Tally::default()));
    let mut peak = before;
    let mut i = 0;
    while !bigs.is_empty() {
        tokio::select! {
            _ = bigs.join_next() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                peak = peak.max(rss(pid).0);
                let body = json!({"model": "m", "max_tokens": 2,
                    "messages": [{"role": "user", "content": format!("small {i}: {}", words(i, 20))}]}).to_string();
                i += 1;
                let (http, url, small) = (http.clone(), format!("{}/v1/chat/completions", s.url), small.clone());
                tokio::spawn(async move {
                    let r = send(&http, &url, body, Expect::Ok).await;
                    small.lock().unwrap().add(r);
                });
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = rss(pid).0;
    let (b, sm) = (big_tally.lock().unwrap(), small.lock().unwrap());
    format!(
        "| spike | 16 concurrent 6 MB prompts ({} routed) with {} small chats beside them ({} failed: {}) | {:.1} s | {} | {} before → peak {} → {} 10 s later | |",
        b.ok,
        sm.total(),
        sm.failed(),
        sm.summary(),
        secs,
        b.failed(),
        mib(before),
        mib(peak),
        mib(after)
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    raise_fd_limit();
    let phases = std::env::var("PHASES").unwrap_or_else(|_| "streams,soak,spike".into());
    let s = stack().await;
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("client");
    // Warm the router's tokenizer and every pod once.
    for i in 0..8 {
        let body = json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": words(i, 10)}]});
        let _ = send(&http, &format!("{}/v1/chat/completions", s.url), body.to_string(), Expect::Ok).await;
    }
    println!("Envoy (2 workers, examples/envoy-full-duplex.yaml) → router (release, defaults, local tokenizer) → 4 vllm-sim pods; 2 cores shared by all, the client included\n");
    println!("| phase | load | took | failed | router RSS | router CPU |");
    println!("|---|---|---:|---|---|---:|");
    let mut notes = Vec::new();
    for phase in phases.split(',') {
        match phase.trim() {
            "streams" => println!("{}", phase_streams(&s, &http).await),
            "soak" => {
                let (row, series) = phase_soak(&s, &http).await;
                println!("{row}");
                notes.push(series);
            }
            "spike" => println!("{}", phase_spike(&s, &http).await),
            other => panic!("unknown phase {other}"),
        }
    }
    for n in notes {
        println!("\n{n}");
    }
    let m = reqwest::get(format!("{}/metrics", s.admin)).await.expect("metrics").text().await.expect("text");
    let degraded: Vec<&str> = m.lines().filter(|l| l.starts_with("prefix_router_tokenize_degraded_total")).collect();
    println!("\nrouter: {}", if degraded.is_empty() { "no degraded tokenization".into() } else { degraded.join("; ") });
}
