//! Routing quality, every policy in one run: random, round-robin, least-load, prefix-router (local
//! tokens), prefix-router (remote tokens through vLLM /tokenize) and an oracle, on three workloads
//! (shared prefix, multi-turn chat, trace replay, cache pressure, three replicas), through a real
//! Envoy (`examples/envoy-buffered.yaml`: BUFFERED request body, no response body — the defaults)
//! in front of `vllm-sim` pods, and the peers vllm-router and sglang-router (`benches/peers.sh`,
//! pinned from PyPI; HTTP proxies the client talks to, one per replica, round robin).
//! Writes BENCHMARKS.md and benches/routing/ttft.svg.
//!
//! `bash benches/routing.sh` (= `cargo bench --bench routing`). Env: SIMS=4, SCALE=1.0 (request
//! counts), TRACE=file.jsonl (replay a Mooncake-style trace instead of the synthetic one),
//! TIME_SCALE=1.0 (trace timestamps × this), WORKLOADS=shared-prefix,multi-turn,trace.
//!
//! The oracle asks every sim how many blocks of the request it holds or is computing for requests
//! queued there (`POST /sim/prefix`) and picks with the router's own cost and balance rule (prefix
//! weight 1, the router's load weight per in-flight request, guard 8 / 1.5×), then sends straight
//! to that sim — the upper bound for the real policy. POLICIES=name,… (prefixes of the row names)
//! runs a subset.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/bins.rs"]
mod bins;
#[path = "../tests/common/bootstrap.rs"]
mod bootstrap;
#[path = "support/procs.rs"]
mod procs;

#[path = "routing/plot.rs"]
mod plot;
#[path = "routing/workload.rs"]
mod workload;

use procs::{free_port, start, Kill};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use workload::Job;

const SIM_ARGS: &[&str] = &["--prefill-us-per-token", "100", "--decode-ms-per-token", "4", "--max-num-seqs", "32"];
const CONCURRENCY: usize = 64;

#[derive(Clone, Copy, PartialEq)]
enum Policy {
    Random,
    RoundRobin,
    LeastLoad,
    PrefixLocal,
    PrefixRendezvous,
    PrefixRemote,
    PrefixEvents,
    VllmRouter,
    SglangRouter,
    Oracle,
}

impl Policy {
    const ALL: [Policy; 10] = [
        Policy::Random,
        Policy::RoundRobin,
        Policy::LeastLoad,
        Policy::PrefixLocal,
        Policy::PrefixRendezvous,
        Policy::PrefixRemote,
        Policy::PrefixEvents,
        Policy::VllmRouter,
        Policy::SglangRouter,
        Policy::Oracle,
    ];
    fn name(self) -> &'static str {
        match self {
            Policy::Random => "random",
            Policy::RoundRobin => "round-robin",
            Policy::LeastLoad => "least-load",
            Policy::PrefixLocal => "prefix-router (local tokens)",
            Policy::PrefixRendezvous => "prefix-router (local tokens, rendezvous placement)",
            Policy::PrefixRemote => "prefix-router (remote tokens)",
            Policy::PrefixEvents => "prefix-router (KV events)",
            Policy::VllmRouter => "vllm-router 0.1.17 (cache_aware)",
            Policy::SglangRouter => "sglang-router 0.3.2 (cache_aware)",
            Policy::Oracle => "oracle",
        }
    }

    /// A peer router (an HTTP proxy the client talks to): its command line for these sims.
    fn peer(self, bin_dir: &str, port: u16, metrics_port: u16, sims: &[SocketAddr]) -> Option<(String, Vec<String>)> {
        let (bin, launch, quiet) = match self {
            Policy::VllmRouter => ("vllm-router", &[][..], "warning"),
            Policy::SglangRouter => ("sglang-router", &["launch"][..], "warn"),
            _ => return None,
        };
        let mut args: Vec<String> = launch.iter().map(|s| (*s).to_owned()).collect();
        args.push("--worker-urls".into());
        args.extend(sims.iter().map(|a| format!("http://{a}")));
        // Their cache-aware policy with the router's balance guard (8 requests and 1.5×).
        for (k, v) in [
            ("--policy", "cache_aware".to_owned()),
            ("--balance-abs-threshold", "8".to_owned()),
            ("--balance-rel-threshold", "1.5".to_owned()),
            ("--host", "127.0.0.1".to_owned()),
            ("--port", port.to_string()),
            ("--prometheus-port", metrics_port.to_string()),
            ("--log-level", quiet.to_owned()),
        ] {
            args.push(k.into());
            args.push(v);
        }
        Some((format!("{bin_dir}/{bin}"), args))
    }
    fn router_args(self) -> Vec<&'static str> {
        match self {
            Policy::Random => vec!["--policy", "random"],
            Policy::RoundRobin => vec!["--policy", "round-robin"],
            Policy::LeastLoad => vec!["--policy", "least-load"],
            Policy::PrefixLocal => vec!["--policy", "prefix"],
            Policy::PrefixRendezvous => vec!["--policy", "prefix", "--placement", "rendezvous"],
            Policy::PrefixRemote => [&["--policy", "prefix"][..], REMOTE_TOKENS].concat(),
            Policy::PrefixEvents => [&["--policy", "prefix", "--kv-events=true"][..], REMOTE_TOKENS].concat(),
            Policy::VllmRouter | Policy::SglangRouter | Policy::Oracle => vec![],
        }
    }
}

/// Tokenize through the sims' `/tokenize` (the engine's own tokens).
const REMOTE_TOKENS: &[&str] = &[
    "--enable-vllm-remote-tokenizer",
    "true",
    "--vllm-tokenizer-endpoint-template",
    "http://{ip}:{port}",
    "--tokenizer-request-timeout",
    "2s",
];

/// How one workload's pods and routers are set up.
#[derive(Clone, Copy)]
struct Shape {
    /// KV blocks per sim (`--num-gpu-blocks`).
    gpu_blocks: usize,
    /// Router replicas behind Envoy (round robin over ext_proc streams).
    replicas: usize,
}

const ROOMY: Shape = Shape { gpu_blocks: 2048, replicas: 1 };

/// Sims, and for router policies a router and a real Envoy in front; for peers, their proxies.
struct Stack {
    sims: Vec<(Kill, SocketAddr)>,
    routers: Vec<(Kill, String)>,
    envoy: Option<(Kill, u16)>,
    peers: Vec<(Kill, String)>,
    _dir: PathBuf,
}

/// The peers' venv (`benches/peers.sh`), or `None` when they cannot be installed here.
fn peers_bin() -> Option<String> {
    static BIN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let out = std::process::Command::new("bash").arg("benches/peers.sh").output().ok()?;
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !dir.is_empty()).then_some(dir)
    })
    .clone()
}

impl Stack {
    async fn start(policy: Policy, sims: usize, shape: Shape) -> Stack {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let tok = repo.join("../shared/fixtures/qwen3");
        let tok = tok.to_str().expect("utf-8").to_owned();
        let blocks = shape.gpu_blocks.to_string();
        let sims: Vec<(Kill, SocketAddr)> = (0..sims)
            .map(|i| {
                let id = format!("sim-{i}");
                let events = serde_json::json!({"enable_kv_cache_events": true, "publisher": "zmq",
                    "endpoint": format!("tcp://127.0.0.1:{}", free_port()),
                    "replay_endpoint": format!("tcp://127.0.0.1:{}", free_port())})
                .to_string();
                let mut args =
                    vec!["--port", "0", "--model", "m", "--tokenizer", &tok, "--id", &id, "--num-gpu-blocks", &blocks];
                if policy == Policy::PrefixEvents {
                    args.extend(["--kv-events-config", events.as_str()]);
                }
                args.extend_from_slice(SIM_ARGS);
                let (k, line) = start(bins::vllm_sim().to_str().expect("utf-8 path"), &args);
                let addr = line.trim().rsplit_once("http://").and_then(|(_, a)| a.parse().ok()).expect("sim addr");
                (k, addr)
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("routing-bench-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("dir");
        if policy == Policy::Oracle {
            return Stack { sims, routers: Vec::new(), envoy: None, peers: Vec::new(), _dir: dir };
        }
        if let Some(bin) = peers_bin() {
            let pods: Vec<SocketAddr> = sims.iter().map(|(_, a)| *a).collect();
            let mut peers = Vec::new();
            for _ in 0..shape.replicas {
                let port = free_port();
                let Some((cmd, args)) = policy.peer(&bin, port, free_port(), &pods) else { break };
                let child = std::process::Command::new(&cmd)
                    .args(&args)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("start {cmd}: {e}"));
                peers.push((Kill(child), format!("http://127.0.0.1:{port}")));
            }
            if !peers.is_empty() {
                for (_, url) in &peers {
                    let port: u16 = url.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("port");
                    procs::wait_port(port).await;
                }
                return Stack { sims, routers: Vec::new(), envoy: None, peers, _dir: dir };
            }
        }
        let eps: Vec<String> = sims.iter().map(|(_, a)| format!("\"{a}\"")).collect();
        let file = dir.join("endpoints.yaml");
        std::fs::write(
            &file,
            format!("models:\n  - name: m\n    tokenizer: {tok}\n    endpoints: [{}]\n", eps.join(", ")),
        )
        .expect("write endpoints");
        let mut args =
            vec!["--host", "127.0.0.1", "--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", "0"];
        args.extend(["--endpoints-file", file.to_str().expect("utf-8")]);
        args.extend(policy.router_args());
        let mut routers = Vec::new();
        let mut grpc_ports = Vec::new();
        for _ in 0..shape.replicas {
            let (rk, line) = start(env!("CARGO_BIN_EXE_prefix-router"), &args);
            let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).expect("address").to_owned();
            let (grpc, admin) = (field("grpc="), field("admin="));
            grpc_ports.push(grpc.rsplit_once(':').expect("port").1.to_owned());
            routers.push((rk, admin));
        }
        if policy == Policy::PrefixEvents {
            wait_exact(&routers, sims.len()).await;
        }
        let port = free_port();
        let ports: Vec<u16> = grpc_ports.iter().map(|p| p.parse().expect("port")).collect();
        let pods: Vec<SocketAddr> = sims.iter().map(|(_, a)| *a).collect();
        let example = std::fs::read_to_string(repo.join("examples/envoy-buffered.yaml")).expect("example");
        let cfg = bootstrap::rewrite(&example, port, free_port(), &ports, &pods);
        let envoy = procs::envoy(&cfg, 1);
        procs::wait_port(port).await;
        Stack { sims, routers, envoy: Some((envoy, port)), peers: Vec::new(), _dir: dir }
    }
}

/// Until every replica reports every pod's events as exact.
async fn wait_exact(routers: &[(Kill, String)], pods: usize) {
    let http = reqwest::Client::new();
    for (_, admin) in routers {
        for _ in 0..300 {
            let m = metrics(&http, admin).await;
            let exact: f64 = m
                .lines()
                .filter(|l| l.starts_with("prefix_router_endpoints_by_trust{") && l.contains("state=\"exact\""))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum();
            if exact as usize >= pods {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[derive(Clone, Debug)]
struct Record {
    ttft_ms: f64,
    e2e_ms: f64,
    prompt: u64,
    cached: u64,
    pod: String,
    reply: String,
}

/// Sends one streaming request; the first SSE chunk comes after prefill, so its arrival is the TTFT.
async fn send(http: &reqwest::Client, url: &str, body: &Value) -> Result<Record, String> {
    let mut body = body.clone();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let t = Instant::now();
    let mut res = http.post(url).json(&body).send().await.map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        let text: String = text.chars().filter(|c| !c.is_control()).take(160).collect();
        return Err(format!("{status}: {text}"));
    }
    let pod = res.headers().get("x-sim-id").and_then(|v| v.to_str().ok()).unwrap_or("?").to_owned();
    let mut ttft = None;
    let mut text = String::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
        ttft.get_or_insert_with(|| t.elapsed());
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let e2e = t.elapsed();
    let mut rec =
        Record { ttft_ms: 0.0, e2e_ms: e2e.as_secs_f64() * 1e3, prompt: 0, cached: 0, pod, reply: String::new() };
    rec.ttft_ms = ttft.unwrap_or(e2e).as_secs_f64() * 1e3;
    for ev in text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
    {
        if let Some(u) = ev.get("usage").filter(|u| !u.is_null()) {
            rec.prompt = u["prompt_tokens"].as_u64().unwrap_or(0);
            rec.cached = u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);
        }
        if let Some(c) = ev["choices"][0]["delta"]["content"].as_str().or(ev["choices"][0]["text"].as_str()) {
            rec.reply.push_str(c);
        }
    }
    Ok(rec)
}

/// The load weight the router runs with (its default unless PREFIX_ROUTER_LOAD_WEIGHT is set), so
/// the oracle applies the same rule.
fn load_weight() -> f64 {
    std::env::var("PREFIX_ROUTER_LOAD_WEIGHT").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_LOAD_WEIGHT)
}
const DEFAULT_LOAD_WEIGHT: f64 = 1.0;

/// Where a request goes: through Envoy, to a peer proxy (round robin over its replicas), or for
/// the oracle straight to the best sim.
struct Target {
    envoy: Option<String>,
    peers: Vec<String>,
    next_peer: AtomicU64,
    sims: Vec<String>,
    inflight: Vec<AtomicU64>,
}

impl Target {
    async fn pick(&self, http: &reqwest::Client, path: &str, body: &Value) -> (String, Option<usize>) {
        if let Some(base) = &self.envoy {
            return (format!("{base}{path}"), None);
        }
        if !self.peers.is_empty() {
            let i = self.next_peer.fetch_add(1, Ordering::Relaxed) as usize % self.peers.len();
            return (format!("{}{path}", self.peers[i]), None);
        }
        let probes = self.sims.iter().map(|s| {
            let http = http.clone();
            let (url, body) = (format!("{s}/sim/prefix"), body.clone());
            async move {
                let v: Value = http.post(url).json(&body).send().await.ok()?.json().await.ok()?;
                Some((v["prompt_tokens"].as_u64()?, v["cached_or_coming_tokens"].as_u64()?))
            }
        });
        let held = futures::future::join_all(probes).await;
        let loads: Vec<u64> = self.inflight.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        let min = loads.iter().copied().min().unwrap_or(0);
        let best = (0..self.sims.len())
            .min_by(|&a, &b| {
                let cost = |i: usize| {
                    let (prompt, cached) = held[i].unwrap_or((0, 0));
                    let guarded = loads[i] > min + 8 && loads[i] as f64 > 1.5 * min as f64;
                    let uncached_blocks = (prompt / 16).saturating_sub(cached / 16);
                    (guarded, uncached_blocks as f64 + load_weight() * loads[i] as f64)
                };
                let (ga, ca) = cost(a);
                let (gb, cb) = cost(b);
                ga.cmp(&gb).then(ca.total_cmp(&cb)).then(loads[a].cmp(&loads[b]))
            })
            .unwrap_or(0);
        (format!("{}{path}", self.sims[best]), Some(best))
    }

    async fn send(&self, http: &reqwest::Client, path: &str, body: &Value) -> Result<Record, String> {
        let (url, sim) = self.pick(http, path, body).await;
        if let Some(i) = sim {
            self.inflight[i].fetch_add(1, Ordering::Relaxed);
        }
        let r = send(http, &url, body).await;
        if let Some(i) = sim {
            self.inflight[i].fetch_sub(1, Ordering::Relaxed);
        }
        r
    }
}

enum Workload {
    Jobs(Vec<Job>),
    Chat { spec: workload::MultiTurn, starts: Vec<f64> },
}

/// Failed requests: how many, and the first one's answer (what a reader needs to see why).
#[derive(Default)]
struct Failures {
    count: usize,
    first: Option<String>,
}

impl Failures {
    fn add(&mut self, error: String) {
        self.count += 1;
        self.first.get_or_insert(error);
    }
}

async fn replay(target: Arc<Target>, w: &Workload) -> (Vec<Record>, Failures, Duration) {
    let http = reqwest::Client::builder().pool_max_idle_per_host(128).build().expect("client");
    let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let records = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Failures::default()));
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    match w {
        Workload::Jobs(jobs) => {
            for job in jobs.iter().cloned() {
                tokio::time::sleep_until(t0 + Duration::from_secs_f64(job.at_ms / 1e3)).await;
                let (target, http, sem, records, errors) =
                    (Arc::clone(&target), http.clone(), Arc::clone(&sem), Arc::clone(&records), Arc::clone(&errors));
                tasks.push(tokio::spawn(async move {
                    let _permit = sem.acquire().await.expect("semaphore");
                    match target.send(&http, job.path, &job.body).await {
                        Ok(r) => records.lock().expect("records").push(r),
                        Err(e) => errors.lock().expect("errors").add(e),
                    }
                }));
            }
        }
        Workload::Chat { spec, starts } => {
            for (conv, at) in starts.iter().copied().enumerate() {
                tokio::time::sleep_until(t0 + Duration::from_secs_f64(at / 1e3)).await;
                let (target, http, sem, records, errors) =
                    (Arc::clone(&target), http.clone(), Arc::clone(&sem), Arc::clone(&records), Arc::clone(&errors));
                let (turns, sentences, output, think) =
                    (spec.turns, spec.turn_sentences, spec.output_len, spec.think_ms);
                tasks.push(tokio::spawn(async move {
                    let mut messages: Vec<Value> = Vec::new();
                    let pauses = workload::arrivals(turns, 1000.0 / think, conv as u64);
                    for turn in 0..turns {
                        messages.push(workload::user_turn(conv, turn, sentences));
                        let body = json!({"model": "m", "messages": messages, "max_tokens": output});
                        let result = {
                            let _permit = sem.acquire().await.expect("semaphore");
                            target.send(&http, "/v1/chat/completions", &body).await
                        };
                        match result {
                            Ok(r) => {
                                messages.push(json!({"role": "assistant", "content": r.reply.clone()}));
                                records.lock().expect("records").push(r);
                            }
                            Err(e) => {
                                errors.lock().expect("errors").add(e);
                                return;
                            }
                        }
                        let pause = if turn == 0 { pauses[0] } else { pauses[turn] - pauses[turn - 1] };
                        tokio::time::sleep(Duration::from_secs_f64(pause / 1e3)).await;
                    }
                }));
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = t0.elapsed();
    let records = records.lock().expect("records").clone();
    let errors = std::mem::take(&mut *errors.lock().expect("errors"));
    (records, errors, elapsed)
}

async fn metrics(http: &reqwest::Client, base: &str) -> String {
    match http.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            l.rsplit_once(' ')
                .filter(|(s, _)| s.split('{').next() == Some(name))
                .and_then(|(_, v)| v.parse::<f64>().ok())
        })
        .sum()
}

struct Row {
    policy: &'static str,
    outside_ms: f64,
    hit_client: f64,
    hit_sims: f64,
    ttft: [f64; 3],
    e2e: [f64; 2],
    throughput: f64,
    max_over_mean: f64,
    requests: usize,
    errors: usize,
    first_error: Option<String>,
    router_us: Option<f64>,
    /// The router's mean time per decision phase, for the rows that run one.
    phases: Option<String>,
    ttfts: Vec<f64>,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn run_policy(policy: Policy, w: &Workload, sims: usize, shape: Shape) -> Option<Row> {
    let stack = Stack::start(policy, sims, shape).await;
    let http = reqwest::Client::new();
    let sim_urls: Vec<String> = stack.sims.iter().map(|(_, a)| format!("http://{a}")).collect();
    if policy.peer("", 0, 0, &[]).is_some() && stack.peers.is_empty() {
        return None;
    }
    let target = Arc::new(Target {
        envoy: stack.envoy.as_ref().map(|(_, p)| format!("http://127.0.0.1:{p}")),
        peers: stack.peers.iter().map(|(_, u)| u.clone()).collect(),
        next_peer: AtomicU64::new(0),
        sims: sim_urls.clone(),
        inflight: (0..sim_urls.len()).map(|_| AtomicU64::new(0)).collect(),
    });
    let (records, errors, elapsed) = replay(target, w).await;
    let (mut hits, mut queries, mut engine_ttft_s, mut engine_n) = (0.0, 0.0, 0.0, 0.0);
    for s in &sim_urls {
        let m = metrics(&http, s).await;
        hits += metric(&m, "vllm:prefix_cache_hits_total");
        queries += metric(&m, "vllm:prefix_cache_queries_total");
        engine_ttft_s += metric(&m, "vllm:time_to_first_token_seconds_sum");
        engine_n += metric(&m, "vllm:time_to_first_token_seconds_count");
    }
    // Each phase's time, summed over the replicas: (sum µs, count).
    const PHASES: [&str; 8] =
        ["parse", "tokenize", "tokenize_pool", "hash", "lookup", "pick", "total", "tokenize_tail"];
    let mut phase_sums = [(0.0, 0.0); PHASES.len()];
    let mut any_router = false;
    for (_, admin) in &stack.routers {
        any_router = true;
        let m = metrics(&http, admin).await;
        let line = |suffix: &str, phase: &str| {
            m.lines()
                .find(|l| {
                    l.starts_with(&format!("prefix_router_phase_duration_microseconds_{suffix}{{phase=\"{phase}\"}}"))
                })
                .and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        for (i, phase) in PHASES.iter().enumerate() {
            phase_sums[i].0 += line("sum", phase);
            phase_sums[i].1 += line("count", phase);
        }
    }
    let mean_us = |phase: &str| {
        let (sum, count) = PHASES.iter().position(|p| *p == phase).map_or((0.0, 0.0), |i| phase_sums[i]);
        (count > 0.0).then(|| sum / count)
    };
    // parse + total per decision (total covers tokenize, hash, lookup, pick).
    let router_us = any_router.then(|| mean_us("parse").unwrap_or(0.0) + mean_us("total").unwrap_or(0.0));
    let phases = any_router.then(|| {
        PHASES.iter().filter_map(|p| mean_us(p).map(|us| format!("{p} {us:.0} µs"))).collect::<Vec<_>>().join(", ")
    });
    let mut per_pod: HashMap<String, usize> = HashMap::new();
    for r in &records {
        *per_pod.entry(r.pod.clone()).or_default() += 1;
    }
    let mean = records.len() as f64 / sims as f64;
    let max = per_pod.values().copied().max().unwrap_or(0) as f64;
    let mut ttfts: Vec<f64> = records.iter().map(|r| r.ttft_ms).collect();
    ttfts.sort_by(f64::total_cmp);
    let mut e2e: Vec<f64> = records.iter().map(|r| r.e2e_ms).collect();
    e2e.sort_by(f64::total_cmp);
    let (prompt, cached): (u64, u64) = records.iter().fold((0, 0), |(p, c), r| (p + r.prompt, c + r.cached));
    drop(stack);
    let client_ttft_ms = ttfts.iter().sum::<f64>() / ttfts.len().max(1) as f64;
    Some(Row {
        // Client TTFT minus the engine's own (its queue and prefill), on average: routing, proxies,
        // tokenization and the network — the time spent outside the engine.
        outside_ms: client_ttft_ms - 1e3 * engine_ttft_s / engine_n.max(1.0),
        policy: policy.name(),
        hit_client: cached as f64 / prompt.max(1) as f64,
        hit_sims: hits / queries.max(1.0),
        ttft: [pct(&ttfts, 0.5), pct(&ttfts, 0.9), pct(&ttfts, 0.99)],
        e2e: [pct(&e2e, 0.5), pct(&e2e, 0.99)],
        throughput: records.len() as f64 / elapsed.as_secs_f64(),
        max_over_mean: if mean > 0.0 { max / mean } else { f64::NAN },
        requests: records.len(),
        errors: errors.count,
        first_error: errors.first,
        router_us,
        phases,
        ttfts,
    })
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| policy | hit rate (usage) | hit rate (sims) | TTFT p50 | TTFT p90 | TTFT p99 | E2E p50 | E2E p99 | req/s | max/mean per pod | router decision (mean) | outside the engine (mean) | ok / errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        if r.requests == 0 {
            // Nothing was served: no figure means anything; the failures line below says why.
            let dashes = ["—"; 11].join(" | ");
            s.push_str(&format!("| {} | {dashes} | 0 / {} |\n", r.policy, r.errors));
            continue;
        }
        let ms = |v: f64| if v >= 1000.0 { format!("{:.2} s", v / 1000.0) } else { format!("{v:.0} ms") };
        s.push_str(&format!(
            "| {} | {:.1}% | {:.1}% | {} | {} | {} | {} | {} | {:.1} | {:.2} | {} | {:.1} ms | {} / {} |\n",
            r.policy,
            r.hit_client * 100.0,
            r.hit_sims * 100.0,
            ms(r.ttft[0]),
            ms(r.ttft[1]),
            ms(r.ttft[2]),
            ms(r.e2e[0]),
            ms(r.e2e[1]),
            r.throughput,
            r.max_over_mean,
            r.router_us.map_or("—".into(), |u| format!("{u:.0} µs")),
            r.outside_ms,
            r.requests,
            r.errors
        ));
    }
    for r in rows.iter().filter(|r| r.errors > 0) {
        let first = r.first_error.as_deref().unwrap_or("?");
        s.push_str(&format!(
            "\n{}: {} of {} requests failed; the first got `{first}`.\n",
            r.policy,
            r.errors,
            r.errors + r.requests
        ));
    }
    s
}

fn verdict(rows: &[Row]) -> String {
    let get = |name: &str| rows.iter().find(|r| r.policy == name);
    // A peer that failed requests is not a fair "best": its rows show the errors.
    let peers: Vec<&Row> =
        rows.iter().filter(|r| r.policy.contains("-router 0.") && r.requests > 0 && r.errors == 0).collect();
    let best_hit = peers.iter().max_by(|a, b| a.hit_client.total_cmp(&b.hit_client));
    let best_p90 = peers.iter().min_by(|a, b| a.ttft[1].total_cmp(&b.ttft[1]));
    let best_out = peers.iter().min_by(|a, b| a.outside_ms.total_cmp(&b.outside_ms));
    let mut versus = String::new();
    if let (Some(h), Some(p), Some(o)) = (best_hit, best_p90, best_out) {
        for ours in [
            "prefix-router (local tokens)",
            "prefix-router (local tokens, rendezvous placement)",
            "prefix-router (KV events)",
        ] {
            let Some(r) = get(ours) else { continue };
            versus.push_str(&format!(
                "{ours} vs the best peer: hit rate {:.2}× {}'s, TTFT p90 {:.2}× {}'s, outside the engine {:.1} ms vs {:.1} ms ({}).\n",
                r.hit_client / h.hit_client.max(1e-9),
                h.policy.split(' ').next().unwrap_or(""),
                r.ttft[1] / p.ttft[1].max(1e-9),
                p.policy.split(' ').next().unwrap_or(""),
                r.outside_ms,
                o.outside_ms,
                o.policy.split(' ').next().unwrap_or("")
            ));
        }
    }
    let events = match (get("prefix-router (KV events)"), get("prefix-router (remote tokens)"), get("oracle")) {
        (Some(ev), Some(hist), Some(oracle)) => format!(
            "KV events vs oracle hit rate: {:.0}% of the oracle's; vs the routing-history index on the same (engine) \
             tokens: {:.2}× its hit rate, TTFT p90 {:.2}× its.\n",
            100.0 * ev.hit_client / oracle.hit_client.max(1e-9),
            ev.hit_client / hist.hit_client.max(1e-9),
            ev.ttft[1] / hist.ttft[1].max(1e-9)
        ),
        _ => String::new(),
    } + &versus;
    let phases = get("prefix-router (local tokens)")
        .and_then(|r| r.phases.as_ref())
        .map(|p| format!("prefix-router (local tokens) decision, mean per phase: {p}.\n"))
        .unwrap_or_default();
    let events = events + &phases;
    let (Some(prefix), Some(oracle), Some(rr)) =
        (get("prefix-router (local tokens)"), get("oracle"), get("round-robin"))
    else {
        return events;
    };
    events
        + &format!(
            "prefix-router (local) vs oracle hit rate: {:.0}% of the oracle's; TTFT p90 vs round-robin: {:.1}× better \
         (the oracle: {:.1}×); busiest pod: {:.2}× the mean.\n",
            100.0 * prefix.hit_client / oracle.hit_client.max(1e-9),
            rr.ttft[1] / prefix.ttft[1].max(1e-9),
            rr.ttft[1] / oracle.ttft[1].max(1e-9),
            prefix.max_over_mean
        )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let sims: usize = env("SIMS", "4").parse().expect("SIMS");
    let scale: f64 = env("SCALE", "1.0").parse().expect("SCALE");
    let wanted = env("WORKLOADS", "shared-prefix,multi-turn,replicas,trace,pressure");
    let n = |x: usize| ((x as f64 * scale).round() as usize).max(1);

    let shared = workload::SharedPrefix {
        groups: 32,
        prompts_per_group: n(12),
        system_sentences: 115,
        question_sentences: 7,
        output_len: 16,
    };
    let chat =
        workload::MultiTurn { conversations: n(32), turns: 5, turn_sentences: 7, output_len: 16, think_ms: 400.0 };
    let trace_text = match std::env::var("TRACE") {
        Ok(path) => std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("TRACE {path}: {e}")),
        Err(_) => workload::synthetic_trace(n(200), 8.0),
    };
    let time_scale: f64 = env("TIME_SCALE", "1.0").parse().expect("TIME_SCALE");
    let only: Option<Vec<String>> = std::env::var("POLICIES").ok().map(|v| v.split(',').map(str::to_owned).collect());

    let mut workloads: Vec<(String, String, Workload, Shape)> = Vec::new();
    if wanted.contains("shared-prefix") {
        let desc = format!(
            "shared prefix: {} groups × {} prompts, system prompt ≈ 1,600 tokens, question ≈ 100 tokens, output {} tokens, \
             Poisson 28 req/s",
            shared.groups, shared.prompts_per_group, shared.output_len
        );
        workloads.push(("Shared prefix".into(), desc, Workload::Jobs(shared.jobs(28.0)), ROOMY));
        let heavy =
            "shared prefix under heavy load: the same requests at Poisson 36 req/s, where round-robin's prefill \
                     work exceeds what the pods can do"
                .to_owned();
        workloads.push(("Shared prefix, heavy load".into(), heavy, Workload::Jobs(shared.jobs(36.0)), ROOMY));
    }
    if wanted.contains("multi-turn") {
        let desc = format!(
            "multi-turn chat: {} conversations × {} turns (≈ 100 new tokens a turn, history resent), starting Poisson 2/s, \
             think time ≈ {} ms",
            chat.conversations, chat.turns, chat.think_ms
        );
        let starts = workload::arrivals(chat.conversations, 2.0, 21);
        workloads.push((
            "Multi-turn chat".into(),
            desc.clone(),
            Workload::Chat { spec: chat.clone(), starts: starts.clone() },
            ROOMY,
        ));
        if wanted.contains("replicas") {
            let desc3 = format!(
                "{desc}; three router replicas behind Envoy (round robin over ext_proc streams), no shared state"
            );
            let three = Shape { replicas: 3, ..ROOMY };
            workloads.push((
                "Multi-turn chat, three router replicas".into(),
                desc3,
                Workload::Chat { spec: chat, starts },
                three,
            ));
        }
    }
    if wanted.contains("trace") {
        let jobs = workload::trace_jobs(&trace_text, time_scale, 32).expect("trace");
        let desc = format!(
            "trace replay: {} requests, 512-token hash blocks ({}), time scale {time_scale}",
            jobs.len(),
            if std::env::var("TRACE").is_ok() { "given trace" } else { "synthetic Mooncake-style trace, ~8 req/s" }
        );
        workloads.push(("Trace replay".into(), desc, Workload::Jobs(jobs), ROOMY));
    }
    if wanted.contains("pressure") {
        let pressure = workload::SharedPrefix {
            groups: 48,
            prompts_per_group: n(12),
            system_sentences: 115,
            question_sentences: 7,
            output_len: 16,
        };
        // The working set is ≈ 106k tokens; pods of 384 blocks hold ≈ 23% of it, of 640 blocks ≈ 39%.
        for (title, blocks) in [("Cache pressure", 384), ("Cache pressure, moderate", 640)] {
            let shape = Shape { gpu_blocks: blocks, ..ROOMY };
            let total = blocks * 16 * sims;
            let desc = format!(
                "{}: shared prefix, {} groups × {} prompts (≈ 1,600-token system prompts), Poisson 12 req/s, \
                 pods of {blocks} blocks each: the pods' total cache ({total} tokens) holds ≈ {:.0}% of the working \
                 set (≈ 106k tokens)",
                title.to_lowercase(),
                pressure.groups,
                pressure.prompts_per_group,
                100.0 * total as f64 / 106_000.0
            );
            workloads.push((title.into(), desc, Workload::Jobs(pressure.jobs(12.0)), shape));
        }
    }

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mut md = format!(
        "# Routing benchmarks\n\nRegenerate everything here with one command: `bash benches/routing.sh` \
         (= `cargo bench --bench routing`; env `SIMS`, `SCALE`, `WORKLOADS`, `TRACE=file.jsonl`, `TIME_SCALE`).\n\n\
         Machine: {cores} cores ({cpu}); {sims} `vllm-sim` pods (`--num-gpu-blocks 2048 {}` unless a workload says \
         otherwise), the router and a real Envoy \
         (`examples/envoy-buffered.yaml`: request body BUFFERED, response body NONE, the router's defaults) per \
         policy, all fresh for every row, all on the same machine. The peers vllm-router 0.1.17 and sglang-router \
         0.3.2 (PyPI, `benches/peers.sh`) run their `cache_aware` policy with the router's balance guard (8 / 1.5×) \
         as HTTP proxies the client talks to (one per replica, requests spread round robin). The rendezvous-placement \
         row is the router with `--placement rendezvous` (the default is `auto`: balanced while the pods' metrics show \
         no other sender, rendezvous once they do): a prompt no pod holds always goes where rendezvous hashing puts it. \
         Requests stream with \
         `include_usage`; TTFT is the first SSE chunk at the client. Open loop with a cap of {CONCURRENCY} requests in flight. \
         Hit rate (usage) is token-weighted `cached_tokens / prompt_tokens`; hit rate (sims) is \
         `vllm:prefix_cache_hits_total / queries_total`. The oracle asks every sim what it holds or is computing \
         for requests queued there and applies the router's cost rule, sending straight to the sim (no Envoy). Router decision is the router's own mean time \
         per request (parse + tokenize + hash + lookup + pick). Outside the engine is the mean client TTFT minus the \
         sims' own mean TTFT (`vllm:time_to_first_token_seconds`): what routing, proxies and the network add.\n\n![TTFT distributions](benches/routing/ttft.svg)\n\n",
        SIM_ARGS.join(" ")
    );
    let mut panels = Vec::new();
    for (title, desc, w, shape) in &workloads {
        eprintln!("== {title}");
        let mut rows = Vec::new();
        for p in Policy::ALL
            .into_iter()
            .filter(|p| only.as_ref().is_none_or(|o| o.iter().any(|n| p.name().starts_with(n.as_str()))))
        {
            let Some(row) = run_policy(p, w, sims, *shape).await else {
                eprintln!("{:<32} skipped: the peers could not be installed (benches/peers.sh)", p.name());
                continue;
            };
            eprintln!(
                "{:<32} hit {:.1}% ttft p90 {:.0} ms ({} ok, {} errors)",
                row.policy,
                row.hit_client * 100.0,
                row.ttft[1],
                row.requests,
                row.errors
            );
            rows.push(row);
        }
        md.push_str(&format!("## {title}\n\n{desc}.\n\n{}\n{}\n", table(&rows), verdict(&rows)));
        panels.push((title.clone(), rows.iter().map(|r| (r.policy.to_owned(), r.ttfts.clone())).collect()));
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(repo.join("benches/routing/ttft.svg"), plot::ttft_cdfs(&panels)).expect("write svg");
    // Sections other benches own (below the marker) are kept as they are.
    let marker = "<!-- other benchmarks: kept by the routing benchmark -->";
    let kept = std::fs::read_to_string(repo.join("BENCHMARKS.md"))
        .ok()
        .and_then(|old| old.split_once(marker).map(|(_, tail)| tail.to_owned()))
        .unwrap_or_default();
    md.push_str(&format!("\n{marker}{kept}"));
    std::fs::write(repo.join("BENCHMARKS.md"), &md).expect("write BENCHMARKS.md");
    println!("{md}");
}
