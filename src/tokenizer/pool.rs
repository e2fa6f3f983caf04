//! TokenizerPool: per model, the model's ready vLLM pods as `/tokenize` endpoints.
//!
//! - An entry is made on a model's first use (concurrent first requests make exactly one), at most
//!   `max_models` entries (least recently used goes first), dropped after `ttl` unused.
//! - An entry's endpoints follow discovery: refreshed whenever the model's snapshot changes.
//! - Calls go to the healthy endpoint with the fewest outstanding calls. A failure ejects the
//!   endpoint for a backoff (250 ms doubling, at most one health period) and the call is retried
//!   once on another endpoint within the same budget; when another endpoint is available the
//!   first attempt gets half the budget, so a hung pod cannot spend all of it.
//! - Every health period each endpoint is probed with a real one-word `/tokenize`, off the request
//!   path: success clears an ejection, failure ejects for a period.
//! - No lock is held across a network call.

use super::remote::{self, CallError};
use crate::discovery::health::Ejection;
use crate::discovery::{Endpoint, Engine, Model};
use crate::metrics::Metrics;
use rand::Rng;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub template: String,
    pub timeout: Duration,
    pub health_period: Duration,
    pub ttl: Duration,
    pub max_models: usize,
}

/// Why a request was not tokenized remotely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    NoEndpoint,
    Call(CallError),
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::NoEndpoint => "no_endpoint",
            Failure::Call(c) => c.label(),
        }
    }
}

const BASE_BACKOFF_MS: u64 = 250;

struct TokEndpoint {
    addr: SocketAddr,
    /// The pod itself: a refused connection takes it out of routing too.
    pod: std::sync::Weak<Endpoint>,
    url: String,
    outstanding: AtomicU32,
    failures: AtomicU32,
    /// Milliseconds since the pool's epoch until which the endpoint is not used; 0 = healthy.
    ejected_until: AtomicU64,
}

struct Entry {
    model: String,
    last_used: AtomicU64,
    endpoints: RwLock<Endpoints>,
}

#[derive(Default)]
struct Endpoints {
    /// The discovery snapshot these were built from (pointer identity), to refresh on change.
    source: Option<std::sync::Weak<Model>>,
    list: Vec<Arc<TokEndpoint>>,
}

pub struct TokenizerPool {
    http: reqwest::Client,
    cfg: PoolConfig,
    epoch: Instant,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    metrics: Arc<Metrics>,
}

/// Decrements an endpoint's outstanding calls when the call ends, however it ends.
struct Outstanding<'a>(&'a TokEndpoint);
impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl TokenizerPool {
    pub fn new(cfg: PoolConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| format!("tokenizer HTTP client: {e}"))?;
        Ok(Self { http, cfg, epoch: Instant::now(), entries: Mutex::new(HashMap::new()), metrics })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Tokenizes `body` (a `/tokenize` request) on one of the model's vLLM pods.
    pub async fn tokenize(&self, model: &Arc<Model>, body: &[u8]) -> Result<Vec<u32>, Failure> {
        let entry = self.entry(model);
        let deadline = Instant::now() + self.cfg.timeout;
        let mut tried: Vec<SocketAddr> = Vec::with_capacity(2);
        let mut last = Failure::NoEndpoint;
        for _ in 0..2 {
            let candidates = self.healthy(&entry, &tried);
            let Some(ep) = pick(&candidates) else { break };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            // Keep half the budget for the retry when there is somewhere to retry.
            let budget = if tried.is_empty() && candidates.len() > 1 { remaining / 2 } else { remaining };
            tried.push(ep.addr);
            ep.outstanding.fetch_add(1, Ordering::Relaxed);
            let _out = Outstanding(ep);
            let started = Instant::now();
            let result = remote::call(&self.http, &ep.url, body, budget).await;
            self.metrics.tokenizer_call_us.observe(started.elapsed().as_secs_f64() * 1e6);
            match result {
                Ok(ids) => {
                    self.metrics.tokenizer_calls.with_label_values(&["ok"]).inc();
                    ep.failures.store(0, Ordering::Relaxed);
                    return Ok(ids);
                }
                Err(e) => {
                    self.metrics.tokenizer_calls.with_label_values(&[e.label()]).inc();
                    self.eject(ep, None);
                    if e == CallError::Connect {
                        if let Some(pod) = ep.pod.upgrade() {
                            pod.eject(Ejection::Tokenizer, &self.metrics);
                        }
                    }
                    last = Failure::Call(e);
                }
            }
        }
        Err(last)
    }

    fn healthy(&self, entry: &Entry, tried: &[SocketAddr]) -> Vec<Arc<TokEndpoint>> {
        let now = self.now_ms();
        let eps = entry.endpoints.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        eps.list
            .iter()
            .filter(|e| !tried.contains(&e.addr) && e.ejected_until.load(Ordering::Relaxed) <= now)
            .cloned()
            .collect()
    }

    /// Ejects an endpoint for `for_ms`, or for its backoff (doubling with consecutive failures).
    fn eject(&self, ep: &TokEndpoint, for_ms: Option<u64>) {
        let n = ep.failures.fetch_add(1, Ordering::Relaxed).min(16);
        let cap = self.cfg.health_period.as_millis() as u64;
        let backoff = for_ms.unwrap_or_else(|| (BASE_BACKOFF_MS << n).min(cap));
        ep.ejected_until.store(self.now_ms() + backoff.max(1), Ordering::Relaxed);
    }

    /// The model's entry, made on first use, with endpoints matching the given snapshot.
    fn entry(&self, model: &Arc<Model>) -> Arc<Entry> {
        let now = self.now_ms();
        let entry = {
            let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(e) = entries.get(&model.name) {
                Arc::clone(e)
            } else {
                if entries.len() >= self.cfg.max_models {
                    let lru =
                        entries.iter().min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed)).map(|(k, _)| k.clone());
                    if let Some(k) = lru {
                        entries.remove(&k);
                        self.metrics.tokenizer_pool_events.with_label_values(&["evicted"]).inc();
                    }
                }
                let e = Arc::new(Entry {
                    model: model.name.clone(),
                    last_used: AtomicU64::new(now),
                    endpoints: RwLock::new(Endpoints::default()),
                });
                entries.insert(model.name.clone(), Arc::clone(&e));
                self.metrics.tokenizer_pool_events.with_label_values(&["created"]).inc();
                e
            }
        };
        entry.last_used.store(now, Ordering::Relaxed);
        let stale = {
            let eps = entry.endpoints.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            !eps.source.as_ref().is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(model)))
        };
        if stale {
            self.refresh(&entry, model);
        }
        entry
    }

    /// Rebuilds an entry's endpoints from the model's ready vLLM pods, keeping the health state
    /// of pods that stay.
    fn refresh(&self, entry: &Entry, model: &Arc<Model>) {
        let mut eps = entry.endpoints.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let old: HashMap<SocketAddr, Arc<TokEndpoint>> = eps.list.drain(..).map(|e| (e.addr, e)).collect();
        eps.list = model
            .endpoints
            .iter()
            .filter(|e| e.engine == Engine::Vllm)
            .map(|e| {
                old.get(&e.addr).cloned().unwrap_or_else(|| {
                    Arc::new(TokEndpoint {
                        addr: e.addr,
                        pod: Arc::downgrade(e),
                        url: remote::endpoint_url(&self.cfg.template, e.addr),
                        outstanding: AtomicU32::new(0),
                        failures: AtomicU32::new(0),
                        ejected_until: AtomicU64::new(0),
                    })
                })
            })
            .collect();
        eps.source = Some(Arc::downgrade(model));
    }

    /// Drops entries unused for longer than the TTL.
    fn expire(&self) {
        let ttl = self.cfg.ttl.as_millis() as u64;
        let now = self.now_ms();
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = entries.len();
        entries.retain(|_, e| now.saturating_sub(e.last_used.load(Ordering::Relaxed)) < ttl);
        let expired = before - entries.len();
        if expired > 0 {
            self.metrics.tokenizer_pool_events.with_label_values(&["expired"]).inc_by(expired as u64);
        }
    }

    /// Probes every endpoint of every entry once, concurrently.
    async fn probe_all(&self) {
        let targets: Vec<(String, Arc<TokEndpoint>)> = {
            let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            entries
                .values()
                .flat_map(|e| {
                    let eps = e.endpoints.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                    eps.list.iter().map(|ep| (e.model.clone(), Arc::clone(ep))).collect::<Vec<_>>()
                })
                .collect()
        };
        let timeout = self.cfg.timeout.min(self.cfg.health_period);
        let probes = targets.into_iter().map(|(model, ep)| async move {
            let body = serde_json::json!({"model": model, "prompt": "ping"}).to_string();
            match remote::call(&self.http, &ep.url, body.as_bytes(), timeout).await {
                Ok(_) => {
                    ep.failures.store(0, Ordering::Relaxed);
                    ep.ejected_until.store(0, Ordering::Relaxed);
                }
                Err(_) => self.eject(&ep, Some(self.cfg.health_period.as_millis() as u64)),
            }
        });
        futures::future::join_all(probes).await;
    }

    /// Health probes every period and TTL expiry, until `stop` fires.
    pub async fn maintain(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut probe = tokio::time::interval(self.cfg.health_period);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let sweep_every = (self.cfg.ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut sweep = tokio::time::interval(sweep_every);
        loop {
            tokio::select! {
                _ = probe.tick() => self.probe_all().await,
                _ = sweep.tick() => self.expire(),
                _ = stop.changed() => return,
            }
        }
    }

    /// (models with an entry, per model: healthy and ejected endpoints) for scrape-time gauges.
    pub fn sample(&self) -> (usize, Vec<(String, u64, u64)>) {
        let now = self.now_ms();
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let per_model = entries
            .values()
            .map(|e| {
                let eps = e.endpoints.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                let ejected = eps.list.iter().filter(|x| x.ejected_until.load(Ordering::Relaxed) > now).count() as u64;
                (e.model.clone(), eps.list.len() as u64 - ejected, ejected)
            })
            .collect();
        (entries.len(), per_model)
    }
}

/// Fewest outstanding calls first; ties at random. Loads are read once, so a concurrent change
/// cannot leave the choice empty.
fn pick(candidates: &[Arc<TokEndpoint>]) -> Option<&TokEndpoint> {
    let loads: Vec<u32> = candidates.iter().map(|e| e.outstanding.load(Ordering::Relaxed)).collect();
    let least = *loads.iter().min()?;
    let ties: Vec<usize> = (0..loads.len()).filter(|&i| loads[i] == least).collect();
    let i = ties[rand::rng().random_range(0..ties.len())];
    Some(&candidates[i])
}
