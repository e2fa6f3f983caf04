//! Every metric name lives here. Labels carry only server-controlled values (model, pod address,
//! outcome, phase, status) — never request text.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use std::sync::Arc;

/// Microsecond buckets from 5 µs to 10 s.
const MICROS: &[f64] =
    &[5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 1e6, 1e7];

/// The phases of a decision `prefix_router_phase_duration_microseconds` is labelled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Parse,
    Tokenize,
    /// Waiting for and running on the tokenizer's CPU pool.
    TokenizePool,
    /// A prompt's rest, tokenized and recorded after the decision (not part of `total`).
    TokenizeTail,
    Hash,
    Lookup,
    Pick,
    Total,
}

impl Phase {
    const ALL: [Phase; 8] = [
        Phase::Parse,
        Phase::Tokenize,
        Phase::TokenizePool,
        Phase::TokenizeTail,
        Phase::Hash,
        Phase::Lookup,
        Phase::Pick,
        Phase::Total,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Phase::Parse => "parse",
            Phase::Tokenize => "tokenize",
            Phase::TokenizePool => "tokenize_pool",
            Phase::TokenizeTail => "tokenize_tail",
            Phase::Hash => "hash",
            Phase::Lookup => "lookup",
            Phase::Pick => "pick",
            Phase::Total => "total",
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    /// Routing decisions by model and outcome (prefix_hit, miss, load_override, load_only, baseline).
    pub decisions: IntCounterVec,
    /// Time in each phase of a decision: parse, tokenize, hash, lookup, pick, total.
    pub phase_us: HistogramVec,
    /// `phase_us`'s series, resolved once: a decision observes five of them.
    phases: [prometheus::Histogram; Phase::ALL.len()],
    /// Matched prefix blocks / prompt blocks of the chosen pod, per model.
    pub matched_ratio: HistogramVec,
    /// Requests answered by the router itself, by HTTP status.
    pub rejections: IntCounterVec,
    /// Tokens that did not come from the engine's own tokenizer, by token space.
    pub tokenized: IntCounterVec,
    /// ext_proc streams by body mode.
    pub streams: IntCounterVec,
    /// Remote `/tokenize` calls by outcome: ok, timeout, http_error, connect_error, bad_response.
    pub tokenizer_calls: IntCounterVec,
    /// Remote `/tokenize` call latency.
    pub tokenizer_call_us: prometheus::Histogram,
    /// Requests tokenized locally because remote tokenization failed, by cause.
    pub tokenize_fallbacks: IntCounterVec,
    /// Tokenization cache lookups: hit, miss.
    pub tokenize_cache: IntCounterVec,
    /// Tokenizer pool entries created, expired (TTL) and evicted (models cap).
    pub tokenizer_pool_events: IntCounterVec,
    /// Tokens of locally tokenized chats by where they came from: reused (cached pieces) or
    /// tokenized (new pieces).
    pub piece_tokens: IntCounterVec,
    /// Requests tokenized on less than their whole input: `truncated` (over the byte cap, the
    /// leading part tokenized) or `pool_full` (the CPU pool had no room: byte approximation).
    pub tokenize_degraded: IntCounterVec,
    /// Pods taken out of routing, by reason.
    pub endpoint_ejections: IntCounterVec,
    /// The proxy's served-endpoint reports: `match` (the primary served) or `mismatch`.
    pub served_reports: IntCounterVec,
    /// KV events applied and subscription occurrences, by kind.
    pub kv_events: IntCounterVec,
    /// Seconds from a batch's engine timestamp to its application here.
    pub kv_event_lag: prometheus::Histogram,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let decisions = IntCounterVec::new(
            Opts::new("prefix_router_decisions_total", "Routing decisions by outcome"),
            &["model", "outcome"],
        )?;
        let phase_us = HistogramVec::new(
            HistogramOpts::new("prefix_router_phase_duration_microseconds", "Time per routing phase")
                .buckets(MICROS.to_vec()),
            &["phase"],
        )?;
        let matched_ratio = HistogramVec::new(
            HistogramOpts::new("prefix_router_matched_prefix_ratio", "Cached share of the prompt on the chosen pod")
                .buckets(vec![0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]),
            &["model"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new("prefix_router_rejections_total", "Requests answered by the router with an error"),
            &["status"],
        )?;
        let tokenized = IntCounterVec::new(
            Opts::new("prefix_router_tokenized_requests_total", "Requests tokenized, by token space"),
            &["space"],
        )?;
        let streams = IntCounterVec::new(
            Opts::new("prefix_router_extproc_streams_total", "ext_proc streams by body mode"),
            &["mode"],
        )?;
        let tokenizer_calls = IntCounterVec::new(
            Opts::new("prefix_router_tokenizer_calls_total", "Remote /tokenize calls by outcome"),
            &["outcome"],
        )?;
        let tokenizer_call_us = prometheus::Histogram::with_opts(
            HistogramOpts::new("prefix_router_tokenizer_call_duration_microseconds", "Remote /tokenize call latency")
                .buckets(MICROS.to_vec()),
        )?;
        let tokenize_fallbacks = IntCounterVec::new(
            Opts::new("prefix_router_tokenize_fallbacks_total", "Requests tokenized locally after a remote failure"),
            &["cause"],
        )?;
        let tokenize_cache = IntCounterVec::new(
            Opts::new("prefix_router_tokenize_cache_total", "Tokenization cache lookups"),
            &["result"],
        )?;
        let tokenizer_pool_events = IntCounterVec::new(
            Opts::new("prefix_router_tokenizer_pool_events_total", "Tokenizer pool entries created, expired, evicted"),
            &["event"],
        )?;
        let piece_tokens = IntCounterVec::new(
            Opts::new(
                "prefix_router_tokenize_piece_tokens_total",
                "Tokens of locally tokenized chats and templated completion prompts: reused from cached pieces or tokenized",
            ),
            &["result"],
        )?;
        let tokenize_degraded = IntCounterVec::new(
            Opts::new(
                "prefix_router_tokenize_degraded_total",
                "Requests routed on part of their input (truncated) or on the byte approximation (pool_full)",
            ),
            &["reason"],
        )?;
        let endpoint_ejections = IntCounterVec::new(
            Opts::new("prefix_router_endpoint_ejections_total", "Pods taken out of routing on a sign of death"),
            &["reason"],
        )?;
        let served_reports = IntCounterVec::new(
            Opts::new(
                "prefix_router_served_reports_total",
                "Served-endpoint reports from the proxy: the chosen pod served (match) or another did (mismatch)",
            ),
            &["result"],
        )?;
        let kv_events = IntCounterVec::new(
            Opts::new(
                "prefix_router_kv_events_total",
                "KV events: blocks stored/removed, clears, dropped batches, gaps and replays by result",
            ),
            &["kind"],
        )?;
        let kv_event_lag = prometheus::Histogram::with_opts(
            HistogramOpts::new("prefix_router_kv_event_lag_seconds", "Engine timestamp of a KV-event batch to its use")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )?;
        for c in [
            &decisions as &dyn CollectorClone,
            &phase_us,
            &matched_ratio,
            &rejections,
            &tokenized,
            &streams,
            &tokenizer_calls,
            &tokenizer_call_us,
            &tokenize_fallbacks,
            &tokenize_cache,
            &tokenizer_pool_events,
            &piece_tokens,
            &tokenize_degraded,
            &endpoint_ejections,
            &served_reports,
            &kv_events,
            &kv_event_lag,
        ] {
            registry.register(c.boxed())?;
        }
        let phases = Phase::ALL.map(|p| phase_us.with_label_values(&[p.label()]));
        Ok(Self {
            registry,
            decisions,
            phase_us,
            phases,
            matched_ratio,
            rejections,
            tokenized,
            streams,
            tokenizer_calls,
            tokenizer_call_us,
            tokenize_fallbacks,
            tokenize_cache,
            tokenizer_pool_events,
            piece_tokens,
            tokenize_degraded,
            endpoint_ejections,
            served_reports,
            kv_events,
            kv_event_lag,
        })
    }

    pub fn observe_phase(&self, phase: Phase, elapsed: std::time::Duration) {
        self.phases[phase as usize].observe(elapsed.as_secs_f64() * 1e6);
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

trait CollectorClone {
    fn boxed(&self) -> Box<dyn Collector>;
}
impl<T: Collector + Clone + 'static> CollectorClone for T {
    fn boxed(&self) -> Box<dyn Collector> {
        Box::new(self.clone())
    }
}

/// Per-pod and per-model gauges read from live state at scrape time, so a removed pod's series
/// vanish with it.
pub struct StateCollector<F> {
    descs: Vec<Desc>,
    sample: F,
}

/// One scrape's worth of state.
#[derive(Debug, Default)]
pub struct StateSample {
    /// (model, pod address, in-flight requests)
    pub inflight: Vec<(String, String, u64)>,
    /// (model, ready endpoints)
    pub endpoints: Vec<(String, u64)>,
    /// (model, ready endpoints ejected from routing)
    pub ejected: Vec<(String, u64)>,
    /// (model, trust state, endpoints)
    pub trust: Vec<(String, &'static str, u64)>,
    /// (model, traffic state, endpoints)
    pub traffic: Vec<(String, &'static str, u64)>,
    /// (model, pod address, blocks indexed)
    pub index_blocks: Vec<(String, String, u64)>,
    /// Models with a remote tokenizer entry (None when remote tokenization is off).
    pub tokenizer_models: Option<u64>,
    /// (model, state: healthy|ejected, tokenizer endpoints)
    pub tokenizer_endpoints: Vec<(String, &'static str, u64)>,
}

struct Gauges {
    inflight: IntGaugeVec,
    endpoints: IntGaugeVec,
    ejected: IntGaugeVec,
    trust: IntGaugeVec,
    traffic: IntGaugeVec,
    index: IntGaugeVec,
    tok_models: IntGaugeVec,
    tok_endpoints: IntGaugeVec,
}

fn gauges() -> Result<Gauges, prometheus::Error> {
    let vec = |name: &str, help: &str, labels: &[&str]| IntGaugeVec::new(Opts::new(name, help), labels);
    Ok(Gauges {
        inflight: vec("prefix_router_inflight_requests", "Routed requests not yet finished", &["model", "upstream"])?,
        endpoints: vec("prefix_router_endpoints", "Ready endpoints per model", &["model"])?,
        ejected: vec("prefix_router_endpoints_ejected", "Ready endpoints out of routing (sign of death)", &["model"])?,
        trust: vec(
            "prefix_router_endpoints_by_trust",
            "Ready endpoints by how routing sees their cache: exact (KV events), degraded, history",
            &["model", "state"],
        )?,
        traffic: vec(
            "prefix_router_endpoints_by_traffic",
            "Ready endpoints by who sends them requests: alone (only this router), shared, counting, unknown",
            &["model", "state"],
        )?,
        index: vec("prefix_router_index_blocks", "Prefix-index blocks per pod", &["model", "upstream"])?,
        tok_models: vec("prefix_router_tokenizer_pool_models", "Models with a remote tokenizer entry", &[])?,
        tok_endpoints: vec(
            "prefix_router_tokenizer_endpoints",
            "Remote tokenizer endpoints per model, by state",
            &["model", "state"],
        )?,
    })
}

impl<F: Fn() -> StateSample + Send + Sync> StateCollector<F> {
    pub fn new(sample: F) -> Result<Self, prometheus::Error> {
        let g = gauges()?;
        let descs = [
            g.inflight.desc(),
            g.endpoints.desc(),
            g.ejected.desc(),
            g.trust.desc(),
            g.traffic.desc(),
            g.index.desc(),
            g.tok_models.desc(),
            g.tok_endpoints.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Ok(Self { descs, sample })
    }
}

impl<F: Fn() -> StateSample + Send + Sync> Collector for StateCollector<F> {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(g) = gauges() else { return Vec::new() };
        let s = (self.sample)();
        for (model, pod, n) in &s.inflight {
            g.inflight.with_label_values(&[model, pod]).set(*n as i64);
        }
        for (model, n) in &s.endpoints {
            g.endpoints.with_label_values(&[model]).set(*n as i64);
        }
        for (model, n) in &s.ejected {
            g.ejected.with_label_values(&[model]).set(*n as i64);
        }
        for (model, state, n) in &s.trust {
            g.trust.with_label_values(&[model.as_str(), state]).set(*n as i64);
        }
        for (model, state, n) in &s.traffic {
            g.traffic.with_label_values(&[model.as_str(), state]).set(*n as i64);
        }
        for (model, pod, n) in &s.index_blocks {
            g.index.with_label_values(&[model, pod]).set(*n as i64);
        }
        let mut out =
            [g.inflight.collect(), g.endpoints.collect(), g.ejected.collect(), g.trust.collect(), g.index.collect()]
                .concat();
        out.extend(g.traffic.collect());
        if let Some(n) = s.tokenizer_models {
            g.tok_models.with_label_values::<&str>(&[]).set(n as i64);
            for (model, state, n) in &s.tokenizer_endpoints {
                g.tok_endpoints.with_label_values(&[model.as_str(), state]).set(*n as i64);
            }
            out.extend(g.tok_models.collect());
            out.extend(g.tok_endpoints.collect());
        }
        out
    }
}

pub fn register_state<F>(metrics: &Metrics, sample: F) -> Result<(), prometheus::Error>
where
    F: Fn() -> StateSample + Send + Sync + 'static,
{
    metrics.registry.register(Box::new(StateCollector::new(sample)?))
}

pub type SharedMetrics = Arc<Metrics>;
