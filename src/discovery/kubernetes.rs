//! Pods from the Kubernetes API through a watcher (list + watch, relist on 410 Gone, backoff on
//! errors). Pods are keyed by UID; a pod is routable when it has an IP, is not terminating and is
//! `Ready=True`. Pods that match the selector but are not routable keep their model known, so its
//! requests get 503 (no ready pod) rather than 404. While the API server is away nothing is
//! published and routing continues on the last known pods.

use super::{EndpointSpec, Engine, ModelSpec, Registry};
use futures::StreamExt;
use hf_chat::HfTokenizer;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MODEL_KEY: &str = "model.aibrix.ai/name";
pub const PORT_KEY: &str = "model.aibrix.ai/port";
pub const ENGINE_KEY: &str = "model.aibrix.ai/engine";
/// A pod's model's HF tokenizer directory: absolute, or under `--tokenizers-dir`.
pub const TOKENIZER_KEY: &str = "model.aibrix.ai/tokenizer";
const DEFAULT_PORT: u16 = 8000;

/// How pods map to models and endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// The `model.aibrix.ai/*` labels: the model label names the model, one port per pod.
    Labels,
    /// An InferencePool's pods: one model named after the pool, an endpoint per target port (how
    /// data-parallel ranks are exposed), vLLM unless the engine label says otherwise.
    Pool { model: String, ports: Vec<u16> },
}

/// What one pod contributes: its model, and its endpoints if it is routable.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub model: String,
    pub endpoints: Vec<EndpointSpec>,
    /// The tokenizer directory the pod names, if any.
    pub tokenizer: Option<String>,
}

fn label_or_annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    let meta = &pod.metadata;
    meta.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .or_else(|| meta.annotations.as_ref().and_then(|a| a.get(key)))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// `None` for a pod that names no model (or has no UID).
pub fn view(pod: &Pod, mapping: &Mapping) -> Option<PodView> {
    let uid = pod.metadata.uid.as_deref()?;
    let engine = label_or_annotation(pod, ENGINE_KEY);
    let (model, ports, engine) = match mapping {
        Mapping::Labels => {
            let port = label_or_annotation(pod, PORT_KEY).and_then(|p| p.parse::<u16>().ok()).unwrap_or(DEFAULT_PORT);
            (label_or_annotation(pod, MODEL_KEY)?.to_owned(), vec![port], engine.map_or(Engine::Other, Engine::parse))
        }
        Mapping::Pool { model, ports } => (model.clone(), ports.clone(), engine.map_or(Engine::Vllm, Engine::parse)),
    };
    let status = pod.status.as_ref();
    let ip: Option<IpAddr> = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok());
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let endpoints = match ip {
        Some(ip) if ready && !terminating => ports
            .iter()
            .map(|&port| {
                // One port: the pod's UID, as before; several: one identity per rank.
                let key = if ports.len() == 1 { uid.to_owned() } else { format!("{uid}:{port}") };
                EndpointSpec { key, addr: SocketAddr::new(ip, port), engine }
            })
            .collect(),
        _ => Vec::new(),
    };
    let tokenizer = label_or_annotation(pod, TOKENIZER_KEY).map(str::to_owned);
    Some(PodView { model, endpoints, tokenizer })
}

/// The desired state from pods by UID: every model seen, with its routable endpoints and the
/// tokenizer `tokenizer(model, named directory)` finds for it.
pub fn specs(
    pods: &HashMap<String, PodView>,
    mut tokenizer: impl FnMut(&str, Option<&str>) -> Option<Arc<HfTokenizer>>,
) -> Vec<ModelSpec> {
    let mut models: BTreeMap<&str, (Vec<EndpointSpec>, Option<&str>)> = BTreeMap::new();
    for v in pods.values() {
        let (eps, dir) = models.entry(v.model.as_str()).or_default();
        eps.extend(v.endpoints.iter().cloned());
        if dir.is_none() {
            *dir = v.tokenizer.as_deref();
        }
    }
    models
        .into_iter()
        .map(|(name, (mut endpoints, dir))| {
            endpoints.sort_by(|a, b| a.key.cmp(&b.key));
            ModelSpec { name: name.to_owned(), tokenizer: tokenizer(name, dir), endpoints }
        })
        .collect()
}

/// Local tokenizers for Kubernetes-discovered models: `DIR/<model name>` under `--tokenizers-dir`,
/// or the directory a pod's `model.aibrix.ai/tokenizer` annotation names (absolute, or under DIR).
/// Each directory is loaded once; one that fails to load is logged once and left out.
#[derive(Default)]
pub struct Tokenizers {
    root: Option<PathBuf>,
    loaded: HashMap<PathBuf, Option<Arc<HfTokenizer>>>,
}

impl Tokenizers {
    pub fn new(root: Option<PathBuf>) -> Self {
        Self { root, loaded: HashMap::new() }
    }

    pub fn find(&mut self, model: &str, named: Option<&str>) -> Option<Arc<HfTokenizer>> {
        let dir = match named {
            Some(n) if Path::new(n).is_absolute() => PathBuf::from(n),
            Some(n) => self.root.as_ref()?.join(n),
            None => self.root.as_ref()?.join(model),
        };
        if let Some(t) = self.loaded.get(&dir) {
            return t.clone();
        }
        // Off the request path (the watcher's task), but a load takes ~0.2 s of CPU.
        let loaded = match tokio::task::block_in_place(|| HfTokenizer::from_dir(&dir)) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                // No directory for this model under the root is normal: not every model has one.
                if named.is_some() || dir.exists() {
                    tracing::warn!(%model, dir = %dir.display(), error = %e, "tokenizer not loaded; routing on the byte approximation");
                }
                None
            }
        };
        self.loaded.insert(dir, loaded.clone());
        loaded
    }
}

pub struct KubeSource {
    pub api: kube::Api<Pod>,
    pub selector: String,
    pub tokenizers: Tokenizers,
    pub mapping: Mapping,
}

impl KubeSource {
    /// Follows the API server until `stop` fires. Events that arrive together are applied as
    /// one publication.
    pub async fn watch(mut self, registry: Arc<Registry>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let cfg = watcher::Config::default().labels(&self.selector);
        let mut events =
            std::pin::pin!(watcher::watcher(self.api, cfg).backoff(Reconnect::default()).ready_chunks(4096));
        let mut pods: HashMap<String, PodView> = HashMap::new();
        let mut listing: Option<HashMap<String, PodView>> = None;
        let mut synced = false;
        let mut failing = false;
        loop {
            let batch = tokio::select! {
                b = events.next() => match b { Some(b) => b, None => return },
                _ = stop.changed() => return,
            };
            let mut changed = false;
            for event in batch {
                match event {
                    Ok(Event::Init) => listing = Some(HashMap::new()),
                    Ok(Event::InitApply(pod)) => {
                        if let (Some(list), Some(uid), Some(v)) =
                            (listing.as_mut(), pod.metadata.uid.clone(), view(&pod, &self.mapping))
                        {
                            list.insert(uid, v);
                        }
                    }
                    Ok(Event::InitDone) => {
                        // A full (re)list replaces everything: changes made while we were away land here.
                        pods = listing.take().unwrap_or_default();
                        changed = true;
                        synced = true;
                    }
                    Ok(Event::Apply(pod)) => {
                        let Some(uid) = pod.metadata.uid.clone() else { continue };
                        match view(&pod, &self.mapping) {
                            Some(v) => changed |= pods.insert(uid, v.clone()).as_ref() != Some(&v),
                            None => changed |= pods.remove(&uid).is_some(),
                        }
                    }
                    Ok(Event::Delete(pod)) => {
                        if let Some(uid) = pod.metadata.uid.as_deref() {
                            changed |= pods.remove(uid).is_some();
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "pod watch failing; routing on the last known pods");
                            failing = true;
                        }
                        continue;
                    }
                }
                if failing {
                    tracing::info!("pod watch recovered");
                    failing = false;
                }
            }
            if changed && synced {
                registry.publish(specs(&pods, |m, d| self.tokenizers.find(m, d)));
            }
        }
    }
}

/// Retry delays after watch errors: 250 ms doubling to 3 s, so a returning API server is seen
/// within seconds (kube's default climbs to 30 s).
#[derive(Debug, Default)]
pub(super) struct Reconnect(u32);

impl Iterator for Reconnect {
    type Item = std::time::Duration;
    fn next(&mut self) -> Option<std::time::Duration> {
        let ms = (250u64 << self.0.min(4)).min(3000);
        self.0 = self.0.saturating_add(1);
        Some(std::time::Duration::from_millis(ms))
    }
}

impl kube::runtime::utils::Backoff for Reconnect {
    fn reset(&mut self) {
        self.0 = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    #[test]
    fn routable_means_ip_ready_and_not_terminating() {
        let base = serde_json::json!({
            "metadata": {"name": "p", "uid": "u1", "labels": {MODEL_KEY: "m", ENGINE_KEY: "vllm"},
                         "annotations": {PORT_KEY: "8080"}},
            "status": {"podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let v = view(&pod(base.clone()), &Mapping::Labels).expect("a model pod");
        let eps: Vec<_> = v.endpoints.iter().map(|e| (e.addr.to_string(), e.engine, e.key.as_str())).collect();
        assert_eq!(eps, vec![("10.0.0.7:8080".to_owned(), Engine::Vllm, "u1")]);
        // An InferencePool's pod: the pool's model, an endpoint per target port, the labels' port ignored.
        let pool = Mapping::Pool { model: "pool".into(), ports: vec![8000, 8001, 8002] };
        let v = view(&pod(base.clone()), &pool).expect("a pool pod");
        let eps: Vec<_> = v.endpoints.iter().map(|e| (e.addr.to_string(), e.key.clone())).collect();
        assert_eq!(v.model, "pool");
        assert_eq!(
            eps,
            vec![
                ("10.0.0.7:8000".to_owned(), "u1:8000".to_owned()),
                ("10.0.0.7:8001".to_owned(), "u1:8001".to_owned()),
                ("10.0.0.7:8002".to_owned(), "u1:8002".to_owned())
            ]
        );

        let mut unready = base.clone();
        unready["status"]["conditions"][0]["status"] = "False".into();
        let mut terminating = base.clone();
        terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        let mut no_ip = base.clone();
        no_ip["status"]["podIP"] = serde_json::Value::Null;
        for p in [unready, terminating, no_ip] {
            let v = view(&pod(p), &Mapping::Labels).expect("still a model pod");
            assert_eq!((v.model.as_str(), v.endpoints), ("m", Vec::new()));
        }
        let mut other = base;
        other["metadata"]["labels"] = serde_json::json!({"app": "x"});
        other["metadata"]["annotations"] = serde_json::json!({});
        assert!(view(&pod(other), &Mapping::Labels).is_none());
    }
}
