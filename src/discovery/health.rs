//! Whether routing may use a pod right now. Discovery says which pods exist and are Ready; this
//! says which of those answered when last tried. A pod is ejected on the first sign of death — a
//! connection refused or reset that Envoy reports on the response path (its own 503), a failed
//! probe, its tokenizer refusing connections — and comes back when a probe of `GET /health`
//! passes. Ejections are logged and counted; probes run off the request path.

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
}

impl Ejection {
    pub fn label(self) -> &'static str {
        match self {
            Ejection::UpstreamUnreachable => "upstream_unreachable",
            Ejection::Probe => "probe",
            Ejection::Tokenizer => "tokenizer",
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
    let mut last_full = tokio::time::Instant::now();
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
                let ok =
                    http.get(format!("http://{}/health", e.addr)).send().await.is_ok_and(|r| r.status().is_success());
                (e, ok)
            }
        });
        for (e, ok) in futures::future::join_all(checks).await {
            if ok {
                e.restore();
            } else {
                e.eject(Ejection::Probe, &metrics);
            }
        }
    }
}
