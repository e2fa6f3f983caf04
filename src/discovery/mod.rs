//! Which pods serve which model. Sources (the static file today, a Kubernetes pod informer next)
//! publish the whole desired state; the registry keeps each pod's identity (and so its in-flight
//! counter and index id) across publications and hands readers an immutable snapshot.

pub mod health;
pub mod inference_pool;
pub mod kubernetes;
pub mod static_file;
pub mod traffic;

use arc_swap::ArcSwap;
use hf_chat::HfTokenizer;
use prefix_index::PodId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    /// A vLLM pod: its `/tokenize` may be used.
    Vllm,
    Other,
}

impl Engine {
    pub fn parse(s: &str) -> Self {
        if s.eq_ignore_ascii_case("vllm") {
            Engine::Vllm
        } else {
            Engine::Other
        }
    }
}

/// One routable pod. Shared by snapshots, in-flight guards and metrics.
#[derive(Debug)]
pub struct Endpoint {
    pub id: PodId,
    /// Identity across publications: the pod UID, or `model/addr` for the static file.
    pub key: String,
    pub addr: SocketAddr,
    pub model: Arc<str>,
    pub engine: Engine,
    /// The same for this pod in every router replica (a hash of its address): rendezvous placement.
    pub affinity: u64,
    inflight: AtomicU64,
    /// Out of routing until a probe passes (see `health`).
    ejected: AtomicBool,
    /// How far routing may trust this pod's KV events (set by the subscriber).
    trust: std::sync::atomic::AtomicU8,
    /// Probes in a row that timed out or failed (not refused): see `health`.
    probe_failures: std::sync::atomic::AtomicU8,
    /// Tokens the pod's KV cache holds (`num_gpu_blocks × block_size` from its
    /// `vllm:cache_config_info`), 0 while unknown: see `health`.
    cache_tokens: AtomicU64,
    /// Requests this router sent the pod (every in-flight guard taken): see `traffic`.
    routed: AtomicU64,
    /// Whether others send the pod requests too ([`traffic::Traffic`], set by `traffic`).
    traffic: std::sync::atomic::AtomicU8,
}

/// How routing sees a pod's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// No events: the router's own routing history stands in for the cache.
    History,
    /// Events were flowing but some were lost and could not be replayed: history again.
    Degraded,
    /// Subscribed and replayed: the event index is what the pod holds.
    Exact,
}

impl Trust {
    pub fn label(self) -> &'static str {
        match self {
            Trust::History => "history",
            Trust::Degraded => "degraded",
            Trust::Exact => "exact",
        }
    }
}

impl Endpoint {
    pub fn trust(&self) -> Trust {
        match self.trust.load(Ordering::Acquire) {
            2 => Trust::Exact,
            1 => Trust::Degraded,
            _ => Trust::History,
        }
    }

    pub fn set_trust(&self, t: Trust) {
        let v = match t {
            Trust::History => 0,
            Trust::Degraded => 1,
            Trust::Exact => 2,
        };
        self.trust.store(v, Ordering::Release);
    }
}

impl Endpoint {
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Tokens the pod's KV cache holds, when it has said.
    pub fn cache_tokens(&self) -> Option<u64> {
        Some(self.cache_tokens.load(Ordering::Relaxed)).filter(|t| *t > 0 && *t != CACHE_NOT_REPORTED)
    }

    /// Whether the pod's `/metrics` has answered the question (with a size or without one).
    pub fn cache_size_asked(&self) -> bool {
        self.cache_tokens.load(Ordering::Relaxed) != 0
    }

    /// What the pod's `/metrics` said: its cache in tokens, or `None` when it does not say.
    pub fn set_cache_tokens(&self, tokens: Option<u64>) {
        self.cache_tokens.store(tokens.filter(|t| *t > 0).unwrap_or(CACHE_NOT_REPORTED), Ordering::Relaxed);
    }

    /// Requests this router has sent the pod.
    pub fn routed(&self) -> u64 {
        self.routed.load(Ordering::Relaxed)
    }

    pub fn traffic(&self) -> traffic::Traffic {
        traffic::Traffic::from_u8(self.traffic.load(Ordering::Acquire))
    }

    pub fn set_traffic(&self, t: traffic::Traffic) {
        self.traffic.store(t.to_u8(), Ordering::Release);
    }
}

/// `cache_tokens` of a pod whose `/metrics` answered without `vllm:cache_config_info`.
const CACHE_NOT_REPORTED: u64 = u64::MAX;

/// Counts one routed request against its pod until dropped (response ended, stream died, or the
/// safety TTL passed).
#[derive(Debug)]
pub struct InflightGuard(Arc<Endpoint>);

impl InflightGuard {
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.inflight.fetch_add(1, Ordering::Relaxed);
        endpoint.routed.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }

    /// Counts the request only if the pod has fewer than `cap` in flight (0 = no cap): the check
    /// and the count are one atomic step, so concurrent decisions cannot overshoot the cap.
    pub fn try_new(endpoint: &Arc<Endpoint>, cap: u64) -> Option<Self> {
        if cap == 0 {
            return Some(Self::new(Arc::clone(endpoint)));
        }
        endpoint.inflight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1)).ok().map(
            |_| {
                endpoint.routed.fetch_add(1, Ordering::Relaxed);
                Self(Arc::clone(endpoint))
            },
        )
    }
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Model {
    pub name: String,
    /// Ready pods only.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Local tokenizer configured for this model, if any.
    pub tokenizer: Option<Arc<HfTokenizer>>,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    pub models: HashMap<String, Arc<Model>>,
    /// The model that serves requests naming any other (an InferencePool's pods serve whatever the
    /// request names: its base model and adapters).
    pub catch_all: Option<String>,
}

impl Snapshot {
    /// The model that serves a request naming `name`.
    pub fn resolve(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name).or_else(|| self.models.get(self.catch_all.as_deref()?))
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.models.values().flat_map(|m| m.endpoints.iter())
    }
}

/// What a source wants published for one model.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub tokenizer: Option<Arc<HfTokenizer>>,
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub key: String,
    pub addr: SocketAddr,
    pub engine: Engine,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("endpoints file {path}: {message}")]
    File { path: String, message: String },
}

pub struct Registry {
    catch_all: Option<String>,
    current: ArcSwap<Snapshot>,
    known: Mutex<HashMap<String, Arc<Endpoint>>>,
    next_id: AtomicU32,
    changes: watch::Sender<Arc<Snapshot>>,
    synced: watch::Sender<bool>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::with_catch_all(None)
    }

    /// A registry whose `catch_all` model serves requests for models it does not know.
    pub fn with_catch_all(catch_all: Option<String>) -> Self {
        let empty = Arc::new(Snapshot::default());
        Self {
            catch_all,
            current: ArcSwap::new(Arc::clone(&empty)),
            known: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            changes: watch::channel(empty).0,
            synced: watch::channel(false).0,
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Resolves each time a new snapshot is published.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.changes.subscribe()
    }

    /// Whether `pod` serves `model` in the current snapshot.
    pub fn is_live(&self, model: &str, pod: PodId) -> bool {
        self.current.load().models.get(model).is_some_and(|m| m.endpoints.iter().any(|e| e.id == pod))
    }

    /// True once a source has published its first full state (readiness).
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    pub fn subscribe_synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    /// Replaces the whole state. Pods keep their identity when their key, address, model and
    /// engine are unchanged; anything else is a new pod (its cache is not the old one's).
    pub fn publish(&self, specs: Vec<ModelSpec>) {
        let mut known = self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next_known = HashMap::new();
        let mut models = HashMap::new();
        for spec in specs {
            let model: Arc<str> = Arc::from(spec.name.as_str());
            let mut endpoints = Vec::with_capacity(spec.endpoints.len());
            for ep in spec.endpoints {
                let reuse = known
                    .get(&ep.key)
                    .filter(|e| e.addr == ep.addr && *e.model == *model && e.engine == ep.engine)
                    .cloned();
                let endpoint = reuse.unwrap_or_else(|| {
                    Arc::new(Endpoint {
                        id: PodId(self.next_id.fetch_add(1, Ordering::Relaxed)),
                        key: ep.key.clone(),
                        addr: ep.addr,
                        model: Arc::clone(&model),
                        engine: ep.engine,
                        affinity: xxhash_rust::xxh3::xxh3_64(ep.addr.to_string().as_bytes()),
                        inflight: AtomicU64::new(0),
                        ejected: AtomicBool::new(false),
                        trust: std::sync::atomic::AtomicU8::new(0),
                        probe_failures: std::sync::atomic::AtomicU8::new(0),
                        cache_tokens: AtomicU64::new(0),
                        routed: AtomicU64::new(0),
                        traffic: std::sync::atomic::AtomicU8::new(0),
                    })
                });
                if next_known.insert(ep.key.clone(), Arc::clone(&endpoint)).is_none() {
                    endpoints.push(endpoint);
                }
            }
            models.insert(spec.name.clone(), Arc::new(Model { name: spec.name, endpoints, tokenizer: spec.tokenizer }));
        }
        *known = next_known;
        let snapshot = Arc::new(Snapshot { models, catch_all: self.catch_all.clone() });
        self.current.store(Arc::clone(&snapshot));
        drop(known);
        self.changes.send_replace(snapshot);
        self.synced.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(model: &str, addrs: &[&str]) -> ModelSpec {
        ModelSpec {
            name: model.into(),
            tokenizer: None,
            endpoints: addrs
                .iter()
                .map(|a| EndpointSpec {
                    key: format!("{model}/{a}"),
                    addr: a.parse().expect("addr"),
                    engine: Engine::Vllm,
                })
                .collect(),
        }
    }

    #[test]
    fn a_pod_s_cache_size_is_asked_once_whether_or_not_it_reports_one() {
        let reg = Registry::new();
        reg.publish(vec![spec("m", &["127.0.0.1:1"])]);
        let e = Arc::clone(&reg.snapshot().models["m"].endpoints[0]);
        assert!(!e.cache_size_asked() && e.cache_tokens().is_none());
        e.set_cache_tokens(None);
        assert!(e.cache_size_asked() && e.cache_tokens().is_none(), "answered without a size: not asked again");
        e.set_cache_tokens(Some(32_768));
        assert_eq!(e.cache_tokens(), Some(32_768));
    }

    #[test]
    fn pods_keep_identity_and_inflight_across_publications() {
        let reg = Registry::new();
        assert!(!reg.is_synced());
        reg.publish(vec![spec("m", &["127.0.0.1:1", "127.0.0.1:2"])]);
        assert!(reg.is_synced());
        let first = Arc::clone(&reg.snapshot().models["m"].endpoints[0]);
        let _guard = InflightGuard::new(Arc::clone(&first));
        reg.publish(vec![spec("m", &["127.0.0.1:1", "127.0.0.1:3"])]);
        let snap = reg.snapshot();
        let again = &snap.models["m"].endpoints[0];
        assert!(Arc::ptr_eq(&first, again));
        assert_eq!(again.inflight(), 1);
        assert_ne!(snap.models["m"].endpoints[1].id, PodId(2), "a new pod gets a new id");
    }
}
