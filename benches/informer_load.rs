//! The pod informer at scale: 5,000 pods (50 models × 100) in the API server stand-in; the router
//! (release build) watches them. Prints time to first full sync, the router's resident memory and
//! CPU, the time from a watch event to the routing change (p50/p99 over 200 readiness flips, one
//! at a time), and CPU under a steady 100 changes/s. `cargo bench --bench informer_load`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/kube_api.rs"]
#[allow(dead_code)] // the tests use the stand-in's other controls
mod kube_api;

use kube_api::{pod, KubeApi};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn proc_stat(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let cpu = f.get(11..13).map_or(0.0, |v| v.iter().filter_map(|x| x.parse::<f64>().ok()).sum::<f64>() / 100.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, rss_kb)
}

async fn model_addrs(http: &reqwest::Client, admin: &str, model: &str) -> Vec<String> {
    let v: serde_json::Value = match http.get(format!("{admin}/debug/endpoints?model={model}")).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => return Vec::new(),
    };
    v["models"][0]["endpoints"]
        .as_array()
        .map(|e| e.iter().filter_map(|x| x["address"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", i / 62_500, (i / 250) % 250, i % 250 + 1)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let api = KubeApi::start().await;
    let (models, per_model) = (50usize, 100usize);
    for i in 0..models * per_model {
        api.apply(pod("models", &format!("p{i}"), &format!("m{}", i / per_model), Some(&ip(i)), true));
    }
    let dir = std::env::temp_dir().join(format!("informer-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let kubeconfig = api.kubeconfig(&dir, "models");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_prefix-router"))
        .args([
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--grpc-health-port",
            "0",
            "--metrics-port",
            "0",
            "--kubernetes",
            "true",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("router");
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("line");
    let admin = line.split_whitespace().find_map(|w| w.strip_prefix("admin=")).expect("admin").to_owned();
    let http = reqwest::Client::new();
    loop {
        if http.get(format!("{admin}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sync = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu_sync, rss_kb) = proc_stat(pid);
    let have = model_addrs(&http, &admin, "m7").await.len();
    if have != per_model {
        let _ = child.kill();
        panic!("m7 has {have} endpoints, want {per_model}");
    }

    // Event → routing change, one change at a time: 100 pods go unready, then ready again.
    let mut lat = Vec::new();
    for k in 0..100usize {
        let i = (k * 37) % (models * per_model);
        let model = format!("m{}", i / per_model);
        let addr = format!("{}:8000", ip(i));
        for ready in [false, true] {
            let t = Instant::now();
            api.apply(pod("models", &format!("p{i}"), &model, Some(&ip(i)), ready));
            while model_addrs(&http, &admin, &model).await.contains(&addr) != ready {
                assert!(t.elapsed() < Duration::from_secs(5), "no change seen");
            }
            lat.push(t.elapsed());
        }
    }
    lat.sort();
    let (p50, p99) = (lat[lat.len() / 2], lat[lat.len() * 99 / 100]);

    // Steady churn: 100 changes/s for 10 s.
    let (cpu0, _) = proc_stat(pid);
    let churn = Instant::now();
    let mut n = 0usize;
    while churn.elapsed() < Duration::from_secs(10) {
        let i = (n * 7919) % (models * per_model);
        api.apply(pod("models", &format!("p{i}"), &format!("m{}", i / per_model), Some(&ip(i)), n % 3 != 0));
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (cpu1, rss_after) = proc_stat(pid);
    let _ = child.kill();
    let _ = child.wait();

    println!("| informer, {} pods ({models} models × {per_model}) | value |", models * per_model);
    println!("|---|---:|");
    println!("| start to ready (first full list + publish) | {:.0} ms |", sync.as_secs_f64() * 1e3);
    println!("| router CPU to start and sync | {:.2} s |", cpu_sync);
    println!("| router resident memory after sync | {:.1} MiB |", rss_kb as f64 / 1024.0);
    println!(
        "| watch event → routing change, p50 / p99 (200 flips; includes the admin poll) | {:.1} / {:.1} ms |",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    println!(
        "| router CPU under {:.0} changes/s for 10 s | {:.1}% of one core |",
        n as f64 / 10.0,
        (cpu1 - cpu0) * 10.0
    );
    println!("| resident memory after churn | {:.1} MiB |", rss_after as f64 / 1024.0);
}
