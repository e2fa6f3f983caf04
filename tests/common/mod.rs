//! Helpers shared by the integration tests: start the real binaries on loopback and read their
//! metrics.
#![allow(dead_code)]

pub(crate) mod bins;
pub(crate) mod bootstrap;
pub(crate) mod cluster;
pub(crate) mod extproc;
pub(crate) mod kube_api;
pub(crate) mod procs;

use std::path::PathBuf;

pub(crate) fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/qwen3")
}

/// Sum of every sample of a metric family in Prometheus text (all label sets), 0 when absent.
pub(crate) fn metric(text: &str, name: &str) -> f64 {
    metric_where(text, name, "")
}

/// Sum of the samples of `name` whose label set contains `label_fragment` (e.g. `pod="1.2.3.4:80"`).
pub(crate) fn metric_where(text: &str, name: &str, label_fragment: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric_name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (metric_name == name && labels.contains(label_fragment)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().expect("http client")
}

/// POSTs `body` as JSON to `url` and returns the JSON answer.
pub(crate) async fn post_json(url: &str, body: &serde_json::Value) -> serde_json::Value {
    client().post(url).json(body).send().await.expect("request").json().await.expect("JSON answer")
}
