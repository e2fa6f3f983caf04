//! The Grafana dashboard against what is really scraped: every query in `deploy/grafana/dashboard.json`
//! names a metric the router (or, for `vllm:` queries, a vLLM pod — here `vllm-sim`, which exports
//! vLLM's names) exports after ordinary traffic, with every label the query groups, filters or
//! labels its legend by; and no router metric carries a label the PodMonitor's target labels would
//! rename on scrape (`pod` becomes `exported_pod`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::client;
use common::cluster::{Cluster, Mode, Options};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Labels Prometheus sets from the scrape target; a metric's own label of the same name is renamed.
const TARGET_LABELS: &[&str] = &["pod", "namespace", "container", "service", "endpoint", "instance", "job"];

/// Metric family → label names seen, from a Prometheus text exposition.
fn families(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, labels) = match line.split_once('{') {
            Some((n, rest)) => (n, rest.split_once('}').map_or("", |(l, _)| l)),
            None => (line.split_whitespace().next().unwrap_or(""), ""),
        };
        let set = out.entry(name.to_owned()).or_default();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            if let Some((k, _)) = pair.split_once('=') {
                set.insert(k.trim().to_owned());
            }
        }
    }
    out
}

/// Metric names in a PromQL expression, and the label names it uses (selectors, `by (…)`).
fn query_terms(expr: &str) -> (Vec<String>, BTreeSet<String>) {
    let mut names = Vec::new();
    let mut labels = BTreeSet::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_' || bytes[i] == ':') {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            if word.starts_with("prefix_router_") || word.starts_with("vllm:") {
                names.push(word);
            }
            continue;
        }
        if c == '{' || c == '(' {
            let close = if c == '{' { '}' } else { ')' };
            let end = bytes[i..].iter().position(|&x| x == close).map_or(bytes.len(), |p| i + p);
            let inner: String = bytes[i + 1..end].iter().collect();
            let grouping =
                c == '(' && expr[..expr.char_indices().nth(i).map_or(0, |(b, _)| b)].trim_end().ends_with("by");
            if c == '{' {
                for m in inner.split(',') {
                    if let Some(k) = m.split(['=', '!', '~']).next() {
                        labels.insert(k.trim().to_owned());
                    }
                }
            } else if grouping {
                labels.extend(inner.split(',').map(|l| l.trim().to_owned()).filter(|l| l != "le"));
            }
            i += 1;
            continue;
        }
        i += 1;
    }
    labels.retain(|l| !l.is_empty());
    (names, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_a_scraped_metric_with_the_labels_it_uses() {
    let remote = ["--enable-vllm-remote-tokenizer", "true", "--vllm-tokenizer-endpoint-template", "http://{ip}:{port}"];
    // Every /tokenize call fails, so the fallback panels have counted data (not only zeroes).
    let opts =
        Options { router_args: &remote, sim_args: &["--fault-tokenize-error-rate", "1.0"], ..Options::default() };
    let cluster = Cluster::start(Mode::FullDuplex, opts);
    let url = cluster.envoy.url("/v1/chat/completions");
    for i in 0..12 {
        let body = json!({"model": "tiny-chat", "max_tokens": 2,
            "messages": [{"role": "system", "content": "You answer questions about KV caches, prefix reuse and routing, briefly and precisely."},
                         {"role": "user", "content": format!("question {} about caches", i % 4)}]});
        assert_eq!(client().post(&url).json(&body).send().await.expect("request").status(), 200);
    }
    let bad = client().post(&url).header("content-type", "application/json").body("{").send().await.expect("request");
    assert_eq!(bad.status(), 400);

    let mut scraped = families(&cluster.router_metrics().await);
    for sim in &cluster.sims {
        let text = client().get(sim.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        for (name, labels) in families(&text) {
            scraped.entry(name).or_default().extend(labels);
        }
    }
    for (name, labels) in scraped.iter().filter(|(n, _)| n.starts_with("prefix_router_")) {
        let clash: Vec<&String> = labels.iter().filter(|l| TARGET_LABELS.contains(&l.as_str())).collect();
        assert!(clash.is_empty(), "{name} carries {clash:?}, which scraping renames");
    }

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboard.json"),
        )
        .expect("dashboard"),
    )
    .expect("JSON");
    let targets: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .collect();
    assert!(targets.len() >= 10, "the dashboard has its panels");
    for t in targets {
        let expr = t["expr"].as_str().expect("expr");
        let (names, mut labels) = query_terms(expr);
        assert!(!names.is_empty(), "{expr}: names a metric");
        let legend = t["legendFormat"].as_str().unwrap_or("");
        labels.extend(legend.split("{{").skip(1).filter_map(|s| s.split_once("}}")).map(|(l, _)| l.trim().to_owned()));
        for name in names {
            // Histograms are queried by their series (`_bucket`); the family's labels apply.
            let have = scraped.get(&name).unwrap_or_else(|| panic!("{expr}: `{name}` is not scraped"));
            for l in &labels {
                assert!(have.contains(l), "{expr}: `{name}` has no label `{l}` (has {have:?})");
            }
        }
    }
}
