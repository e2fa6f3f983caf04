//! Whether this router sends all of a pod's requests, or others send some too (router replicas
//! that share no state with this one, clients going around it). It decides where a prompt no pod
//! holds goes under `--placement auto`: spread for balance while the router is alone, by rendezvous
//! hashing once it is not, so that replicas place a new conversation alike.
//!
//! Every `period`, each vLLM pod's `/metrics` says how many requests it has begun answering
//! (`vllm:time_to_first_token_seconds_count`, summed over its engines). Alone, that count grows by
//! no more than this router sent the pod (routed requests, counted where the in-flight guard is
//! taken), give or take the requests still before their first token; growth past that over the
//! last `WINDOW` is someone else's traffic. A pod counts as shared while that surplus exceeds
//! `SURPLUS_FLOOR` requests plus `SURPLUS_SHARE` of what this router sent it in the window, and
//! alone again a window after the others stop.

use super::{Endpoint, Registry};
use prefix_index::PodId;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How much of the past a pod's surplus is summed over.
const WINDOW: Duration = Duration::from_secs(30);
/// A surplus of this many requests is noise (a retry by the proxy, the requests in prefill when
/// counting began)…
const SURPLUS_FLOOR: f64 = 2.0;
/// …and so is this share of the router's own requests (its requests before their first token).
const SURPLUS_SHARE: f64 = 0.25;
/// Reads in a row without a count before a pod is taken not to say.
const MISSES: u8 = 3;

/// What the router knows of the other senders to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// Not read twice yet: taken as alone (a fresh router has nothing to agree with yet).
    Counting,
    /// Every request the pod began came from this router.
    Alone,
    /// Others send it requests too.
    Shared,
    /// Its metrics do not say (not vLLM, or no count): whether others send is unknown.
    Unknown,
}

impl Traffic {
    pub fn label(self) -> &'static str {
        match self {
            Traffic::Counting => "counting",
            Traffic::Alone => "alone",
            Traffic::Shared => "shared",
            Traffic::Unknown => "unknown",
        }
    }

    /// Whether another sender may place prompts on the pod, so placement must agree with it.
    pub fn has_other_senders(self) -> bool {
        matches!(self, Traffic::Shared | Traffic::Unknown)
    }

    pub(super) fn to_u8(self) -> u8 {
        match self {
            Traffic::Counting => 0,
            Traffic::Alone => 1,
            Traffic::Shared => 2,
            Traffic::Unknown => 3,
        }
    }

    pub(super) fn from_u8(v: u8) -> Self {
        match v {
            1 => Traffic::Alone,
            2 => Traffic::Shared,
            3 => Traffic::Unknown,
            _ => Traffic::Counting,
        }
    }
}

/// One pod's readings: the counts last seen and the surplus over time.
#[derive(Debug, Default)]
struct Tracker {
    /// (requests the pod began, requests this router sent it) at the last read.
    last: Option<(u64, u64)>,
    /// Requests the pod began minus requests this router sent it, since the first read.
    surplus: i64,
    /// (when, surplus then, routed then), oldest first, covering `WINDOW`.
    samples: VecDeque<(Instant, i64, u64)>,
    misses: u8,
}

impl Tracker {
    /// Takes one read: `began` from the pod's metrics (`None`: it did not say), `routed` from the
    /// router's own count.
    fn observe(&mut self, now: Instant, began: Option<u64>, routed: u64) -> Traffic {
        let Some(began) = began else {
            self.misses = self.misses.saturating_add(1);
            if self.misses < MISSES {
                return self.verdict();
            }
            *self = Tracker { misses: MISSES, ..Tracker::default() };
            return Traffic::Unknown;
        };
        self.misses = 0;
        let Some((last_began, last_routed)) = self.last.replace((began, routed)) else {
            self.samples.push_back((now, 0, routed));
            return Traffic::Counting;
        };
        // A count that went down is a restarted pod: it counts again from zero.
        let grew = if began >= last_began { began - last_began } else { began };
        let sent = routed.saturating_sub(last_routed);
        self.surplus += grew as i64 - sent as i64;
        self.samples.push_back((now, self.surplus, routed));
        while self.samples.len() > 1 && self.samples.front().is_some_and(|s| now.duration_since(s.0) > WINDOW) {
            self.samples.pop_front();
        }
        self.verdict()
    }

    fn verdict(&self) -> Traffic {
        if self.misses >= MISSES {
            return Traffic::Unknown;
        }
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return Traffic::Counting;
        };
        if self.samples.len() < 2 {
            return Traffic::Counting;
        }
        // The surplus rises with others' requests and dips while ours wait for their first token;
        // measured from its lowest point in the window, the dip does not count as others'.
        let lowest = self.samples.iter().map(|s| s.1).min().unwrap_or(last.1);
        let others = (last.1 - lowest) as f64;
        let ours = last.2.saturating_sub(first.2) as f64;
        if others > SURPLUS_FLOOR + SURPLUS_SHARE * ours {
            Traffic::Shared
        } else {
            Traffic::Alone
        }
    }
}

/// Requests a vLLM pod has begun answering: its `vllm:time_to_first_token_seconds_count` samples,
/// summed (one per engine and model name). `None` when there is none.
pub fn requests_begun(metrics: &str) -> Option<u64> {
    const NAME: &str = "vllm:time_to_first_token_seconds_count";
    let mut total: Option<f64> = None;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(NAME) else { continue };
        // `name{labels} value [timestamp]` or `name value [timestamp]`.
        let after = match rest.as_bytes().first() {
            Some(b'{') => rest.rfind('}').map(|at| &rest[at + 1..]),
            Some(b' ') => Some(rest),
            _ => None,
        };
        if let Some(v) = after.and_then(|a| a.split_whitespace().next()).and_then(|v| v.parse::<f64>().ok()) {
            if v.is_finite() && v >= 0.0 {
                *total.get_or_insert(0.0) += v;
            }
        }
    }
    total.map(|t| t.round() as u64)
}

/// Reads every pod's count every `period` until `stop`, and keeps each pod's [`Traffic`] current.
pub async fn watch(registry: Arc<Registry>, period: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Ok(http) = reqwest::Client::builder().timeout(Duration::from_secs(1)).tcp_nodelay(true).build() else {
        tracing::error!("traffic reading disabled: no HTTP client; placement treats every pod as shared");
        for e in registry.snapshot().endpoints() {
            e.set_traffic(Traffic::Unknown);
        }
        return;
    };
    let mut trackers: HashMap<PodId, Tracker> = HashMap::new();
    loop {
        let pods: Vec<Arc<Endpoint>> = registry.snapshot().endpoints().cloned().collect();
        trackers.retain(|id, _| pods.iter().any(|e| e.id == *id));
        let reads = pods.into_iter().map(|e| {
            let http = http.clone();
            async move {
                let began = if e.engine == super::Engine::Vllm {
                    super::health::metrics_text(&http, e.addr).await.as_deref().and_then(requests_begun)
                } else {
                    None
                };
                (e, began)
            }
        });
        let now = Instant::now();
        for (e, began) in futures::future::join_all(reads).await {
            let tracker = trackers.entry(e.id).or_default();
            let traffic = if e.engine == super::Engine::Vllm {
                tracker.observe(now, began, e.routed())
            } else {
                Traffic::Unknown
            };
            let was = e.traffic();
            if was != traffic {
                e.set_traffic(traffic);
                if was != Traffic::Counting || traffic != Traffic::Alone {
                    tracing::info!(pod = %e.addr, model = %e.model, from = was.label(), to = traffic.label(), "pod traffic");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads once a second: `began` and `routed` are the running totals at each read.
    fn run(reads: &[(u64, u64)]) -> Vec<Traffic> {
        let t0 = Instant::now();
        let mut t = Tracker::default();
        reads
            .iter()
            .enumerate()
            .map(|(i, &(began, routed))| t.observe(t0 + Duration::from_secs(i as u64), Some(began), routed))
            .collect()
    }

    #[test]
    fn the_count_is_summed_over_engines_and_read_with_or_without_labels_or_timestamps() {
        let m = "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.\n\
                 vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"+Inf\",model_name=\"m\"} 7.0\n\
                 vllm:time_to_first_token_seconds_count{engine=\"0\",model_name=\"m\"} 7.0\n\
                 vllm:time_to_first_token_seconds_count{engine=\"1\",model_name=\"m\"} 5 1733550000000\n\
                 vllm:time_to_first_token_seconds_sum{engine=\"0\",model_name=\"m\"} 0.4\n";
        assert_eq!(requests_begun(m), Some(12));
        assert_eq!(requests_begun("vllm:time_to_first_token_seconds_count 3\n"), Some(3));
        assert_eq!(requests_begun("vllm:time_to_first_token_seconds_sum 3\nvllm:num_requests_running 1\n"), None);
        assert_eq!(requests_begun("vllm:time_to_first_token_seconds_count_total 3\n"), None);
        assert_eq!(requests_begun("vllm:time_to_first_token_seconds_count{a=\"b\"} NaN\n"), None);
    }

    #[test]
    fn a_router_that_sends_everything_is_alone_even_while_its_requests_wait() {
        // 10 sent a second; up to 8 of them still before their first token at each read.
        let reads: Vec<(u64, u64)> =
            (0..40u64).map(|s| ((s * 10).saturating_sub(if s % 3 == 0 { 8 } else { 1 }), s * 10)).collect();
        let seen = run(&reads);
        assert_eq!(seen[0], Traffic::Counting);
        assert!(seen[1..].iter().all(|t| *t == Traffic::Alone), "{seen:?}");
    }

    #[test]
    fn others_traffic_is_seen_within_seconds_and_forgotten_a_window_after_it_stops() {
        // One of three replicas: the pod begins 3 requests a second, one of them this router's.
        let mut reads: Vec<(u64, u64)> = (0..10).map(|s| (s * 3, s)).collect();
        // Then the other replicas go: 40 s of this router alone.
        reads.extend((1..=40).map(|s| (27 + s * 2, 9 + s * 2)));
        let seen = run(&reads);
        let first_shared = seen.iter().position(|t| *t == Traffic::Shared).expect("seen as shared");
        assert!(first_shared <= 3, "took {first_shared} s: {seen:?}");
        assert!(seen[first_shared..10].iter().all(|t| *t == Traffic::Shared), "{seen:?}");
        assert_eq!(seen[15], Traffic::Shared, "the window still holds others' requests");
        assert_eq!(*seen.last().expect("reads"), Traffic::Alone, "{seen:?}");
    }

    #[test]
    fn a_restarted_pod_counts_from_zero_and_a_silent_one_becomes_unknown() {
        let seen = run(&[(500, 0), (510, 10), (3, 13), (13, 23)]);
        assert_eq!(seen[2..], [Traffic::Alone, Traffic::Alone]);
        let (t0, mut t) = (Instant::now(), Tracker::default());
        assert_eq!(t.observe(t0, Some(0), 0), Traffic::Counting);
        assert_eq!(t.observe(t0 + Duration::from_secs(1), Some(1), 1), Traffic::Alone);
        assert_eq!(t.observe(t0 + Duration::from_secs(2), None, 1), Traffic::Alone, "one miss is a hiccup");
        assert_eq!(t.observe(t0 + Duration::from_secs(3), None, 1), Traffic::Alone);
        assert_eq!(t.observe(t0 + Duration::from_secs(4), None, 1), Traffic::Unknown);
        assert!(Traffic::Unknown.has_other_senders() && !Traffic::Counting.has_other_senders());
    }
}
