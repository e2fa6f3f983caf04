//! Whether routing may use a pod right now. Discovery says which pods exist and are Ready; this
//! says which of those answered when last tried. A pod is ejected on the first sign of death — a
//! connection refused or reset that Envoy reports on the response path (its own 503, or the
//! served-endpoint report naming the next address after a retry), a probe
//! refused, its tokenizer refusing connections — or on a second probe in a row that times out or
//! fails (a pod busy enough to answer `/health` late once is busy, not dead), and comes back when
//! a probe of `GET /health` passes. Ejections are logged and counted; probes run off the request
//! path.

use super::{Endpoint, Registry};
use crate::metrics::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Why a pod was ejected (the `reason` label of `prefix_router_endpoint_ejections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// Envoy answered the routed request itself with 503: it could not reach the pod.
    UpstreamUnreachable,
    /// `GET /health` failed.
    Probe,
    /// The pod's tokenizer refused the connection.
    Tokenizer,
    /// The proxy served the request from the next address in the header: the pod was unusable.
    ServedElsewhere,
}

impl Ejection {
    pub fn label(self) -> &'static str {
        match self {
            Ejection::UpstreamUnreachable => "upstream_unreachable",
            Ejection::Probe => "probe",
            Ejection::Tokenizer => "tokenizer",
            Ejection::ServedElsewhere => "served_elsewhere",
        }
    }
}

impl Endpoint {
    /// False from the first sign of death until a probe passes.
    pub fn is_routable(&self) -> bool {
        !self.ejected.load(Ordering::Acquire)
    }

    /// Takes the pod out of routing (logged and counted the first time).
    pub fn eject(&self, why: Ejection, metrics: &Metrics) {
        if !self.ejected.swap(true, Ordering::AcqRel) {
            metrics.endpoint_ejections.with_label_values(&[why.label()]).inc();
            tracing::warn!(pod = %self.addr, model = %self.model, reason = why.label(), "endpoint ejected from routing");
        }
    }

    fn restore(&self) {
        if self.ejected.swap(false, Ordering::AcqRel) {
            tracing::info!(pod = %self.addr, model = %self.model, "endpoint back in routing: its probe passed");
        }
    }
}

enum Probe {
    Passed,
    /// Nothing listens: dead now.
    Refused,
    /// Timed out or answered an error: dead only if it happens twice in a row.
    Failed,
}

/// Probes every pod every `period` and ejected pods every `retry`, until `stop`.
pub async fn probe(
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    period: Duration,
    retry: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(http) = reqwest::Client::builder().timeout(Duration::from_secs(1)).tcp_nodelay(true).build() else {
        tracing::error!("endpoint health probes disabled: no HTTP client");
        return;
    };
    // The first round probes every pod (and learns their cache sizes) at once.
    let mut last_full = tokio::time::Instant::now().checked_sub(period).unwrap_or_else(tokio::time::Instant::now);
    loop {
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            _ = stop.changed() => return,
        }
        let full = last_full.elapsed() >= period;
        if full {
            last_full = tokio::time::Instant::now();
        }
        let targets: Vec<Arc<Endpoint>> =
            registry.snapshot().endpoints().filter(|e| full || !e.is_routable()).cloned().collect();
        let checks = targets.into_iter().map(|e| {
            let http = http.clone();
            async move {
                let outcome = match http.get(format!("http://{}/health", e.addr)).send().await {
                    Ok(r) if r.status().is_success() => Probe::Passed,
                    Err(err) if err.is_connect() => Probe::Refused,
                    _ => Probe::Failed,
                };
                (e, outcome)
            }
        });
        for (e, outcome) in futures::future::join_all(checks).await {
            match outcome {
                Probe::Passed => {
                    e.probe_failures.store(0, Ordering::Release);
                    e.restore();
                    // Asked once per pod: again only if its /metrics did not answer.
                    if !e.cache_size_asked() && e.engine == super::Engine::Vllm {
                        if let Some(metrics) = metrics_text(&http, e.addr).await {
                            let tokens = cache_tokens_of(&metrics);
                            tracing::debug!(pod = %e.addr, ?tokens, "pod KV cache size");
                            e.set_cache_tokens(tokens);
                        }
                    }
                }
                Probe::Refused => e.eject(Ejection::Probe, &metrics),
                Probe::Failed => {
                    if e.probe_failures.fetch_add(1, Ordering::AcqRel).saturating_add(1) >= 2 {
                        e.eject(Ejection::Probe, &metrics);
                    }
                }
            }
        }
    }
}

/// A pod's `/metrics` text, `None` when it did not answer with success.
pub(super) async fn metrics_text(http: &reqwest::Client, addr: std::net::SocketAddr) -> Option<String> {
    let res = http.get(format!("http://{addr}/metrics")).send().await.ok()?;
    if !res.status().is_success() {
        return None;
    }
    res.text().await.ok()
}

/// The tokens a vLLM pod's KV cache holds, from `vllm:cache_config_info` (`num_gpu_blocks` ×
/// `block_size`, labels as vLLM renders them: `"2048"`, `"16"`).
fn cache_tokens_of(metrics: &str) -> Option<u64> {
    let line = metrics.lines().find(|l| l.starts_with("vllm:cache_config_info{"))?;
    let label = |name: &str| -> Option<u64> {
        let at = line.find(&format!("{name}=\""))? + name.len() + 2;
        line[at..].split('"').next()?.parse().ok()
    };
    label("num_gpu_blocks")?.checked_mul(label("block_size")?).filter(|t| *t > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{EndpointSpec, Engine, ModelSpec};
    use std::sync::atomic::AtomicU16;

    /// A pod whose `/health` answers `status` (503 counts as a failed probe, not a refusal).
    async fn health_server(status: Arc<AtomicU16>) -> std::net::SocketAddr {
        let app = axum::Router::new().route(
            "/health",
            axum::routing::get(move || {
                let s = status.load(Ordering::Relaxed);
                async move { axum::http::StatusCode::from_u16(s).unwrap_or(axum::http::StatusCode::OK) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[test]
    fn the_cache_size_comes_from_vllm_cache_config_info() {
        let m = "# TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\",enable_prefix_caching=\"True\",num_gpu_blocks=\"2048\",prefix_caching_hash_algo=\"sha256_cbor\"} 1.0\n";
        assert_eq!(cache_tokens_of(m), Some(32_768));
        assert_eq!(cache_tokens_of("vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"None\"} 1.0"), None);
        assert_eq!(cache_tokens_of("vllm:num_requests_running 0"), None);
    }

    #[tokio::test]
    async fn a_refused_probe_ejects_at_once_a_failing_one_only_the_second_time_and_a_pass_restores() {
        let status = Arc::new(AtomicU16::new(503));
        let busy = health_server(Arc::clone(&status)).await;
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let registry = Arc::new(Registry::new());
        let spec = |addr: std::net::SocketAddr| EndpointSpec { key: addr.to_string(), addr, engine: Engine::Vllm };
        registry.publish(vec![ModelSpec {
            name: "m".into(),
            tokenizer: None,
            endpoints: vec![spec(busy), spec(closed)],
        }]);
        let snap = registry.snapshot();
        let (b, c) = (Arc::clone(&snap.models["m"].endpoints[0]), Arc::clone(&snap.models["m"].endpoints[1]));
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        // A round every 200 ms (at 200, 400, 600 ms…); the checks fall between rounds.
        let period = Duration::from_millis(200);
        let task = tokio::spawn(probe(Arc::clone(&registry), Arc::clone(&metrics), period, period, stop));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!c.is_routable(), "nothing listens: out at the first probe");
        assert!(b.is_routable(), "one failed probe: busy, not dead");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!b.is_routable(), "failed twice in a row: out");
        status.store(200, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(b.is_routable(), "a passing probe brings it back");
        assert_eq!(metrics.endpoint_ejections.with_label_values(&["probe"]).get(), 2);
        let _ = stop_tx.send(true);
        let _ = task.await;
    }
}
