//! Pods from a Gateway API InferencePool (`inference.networking.k8s.io/v1`): the pool's
//! `spec.selector.matchLabels` picks the pods in its namespace, and each of its `spec.targetPorts`
//! on each ready pod is an endpoint (data-parallel ranks). The pool is watched too: an edit to its
//! selector or ports restarts the pod watch on the new ones; a deleted pool leaves no endpoints (503).
//! Every endpoint serves one model named after the pool, which also serves requests naming any
//! other model (the pool's base model and adapters).

use super::kubernetes::{KubeSource, Mapping, Reconnect, Tokenizers};
use super::{ModelSpec, Registry};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// What the router needs of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// `k=v,k=v` from `spec.selector.matchLabels`, sorted.
    pub selector: String,
    pub ports: Vec<u16>,
}

/// The pool's selector and target ports, `None` when the object lacks them.
pub fn spec_of(pool: &DynamicObject) -> Option<PoolSpec> {
    let spec = pool.data.get("spec")?;
    let labels = spec.get("selector")?.get("matchLabels")?.as_object()?;
    let mut terms: Vec<String> = labels.iter().filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?))).collect();
    terms.sort();
    let ports: Vec<u16> = spec
        .get("targetPorts")?
        .as_array()?
        .iter()
        .filter_map(|p| u16::try_from(p.get("number")?.as_u64()?).ok())
        .collect();
    (!terms.is_empty() && !ports.is_empty()).then(|| PoolSpec { selector: terms.join(","), ports })
}

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("inference.networking.k8s.io", "v1", "InferencePool"),
        "inferencepools",
    )
}

pub struct PoolSource {
    pub pools: kube::Api<DynamicObject>,
    pub pods: kube::Api<Pod>,
    pub name: String,
    pub tokenizers_dir: Option<PathBuf>,
}

impl PoolSource {
    /// Follows the pool, and its pods through a [`KubeSource`], until `stop` fires.
    pub async fn watch(self, registry: Arc<Registry>, mut stop: watch::Receiver<bool>) {
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut events = std::pin::pin!(watcher::watcher(self.pools.clone(), cfg).backoff(Reconnect::default()));
        let mut current: Option<Option<PoolSpec>> = None;
        let mut listing: Option<Option<PoolSpec>> = None;
        let mut pods: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)> = None;
        let mut failing = false;
        loop {
            let event = tokio::select! {
                e = events.next() => match e { Some(e) => e, None => break },
                _ = stop.changed() => break,
            };
            let next = match event {
                Ok(Event::Init) => {
                    listing = Some(None);
                    None
                }
                Ok(Event::InitApply(pool)) => {
                    listing = Some(spec_of(&pool));
                    None
                }
                Ok(Event::InitDone) => listing.take(),
                Ok(Event::Apply(pool)) => Some(spec_of(&pool)),
                Ok(Event::Delete(_)) => Some(None),
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, pool = %self.name, "InferencePool watch failing; routing on the last known pods");
                        failing = true;
                    }
                    None
                }
            };
            let Some(next) = next else { continue };
            failing = false;
            if current.as_ref() == Some(&next) {
                continue;
            }
            current = Some(next.clone());
            if let Some((tx, task)) = pods.take() {
                let _ = tx.send(true);
                task.abort();
            }
            match next {
                Some(spec) => {
                    tracing::info!(pool = %self.name, selector = %spec.selector, ports = ?spec.ports, "InferencePool: following its pods");
                    let (tx, rx) = watch::channel(false);
                    let source = KubeSource {
                        api: self.pods.clone(),
                        selector: spec.selector,
                        tokenizers: Tokenizers::new(self.tokenizers_dir.clone()),
                        mapping: Mapping::Pool { model: self.name.clone(), ports: spec.ports },
                    };
                    pods = Some((tx, tokio::spawn(source.watch(Arc::clone(&registry), rx))));
                }
                None => {
                    tracing::warn!(pool = %self.name, "InferencePool missing or without selector and target ports: no endpoints");
                    registry.publish(vec![ModelSpec {
                        name: self.name.clone(),
                        tokenizer: None,
                        endpoints: Vec::new(),
                    }]);
                }
            }
        }
        if let Some((tx, task)) = pods {
            let _ = tx.send(true);
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_gives_its_sorted_selector_and_target_ports() {
        let pool: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": "p"},
            "spec": {"selector": {"matchLabels": {"b": "2", "a": "1"}},
                     "targetPorts": [{"number": 8000}, {"number": 8001}],
                     "endpointPickerRef": {"name": "prefix-router-epp", "port": {"number": 9002}}}
        }))
        .expect("pool");
        assert_eq!(spec_of(&pool), Some(PoolSpec { selector: "a=1,b=2".into(), ports: vec![8000, 8001] }));
        let empty: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": "p"}, "spec": {"selector": {"matchLabels": {}}, "targetPorts": []}
        }))
        .expect("pool");
        assert_eq!(spec_of(&empty), None);
    }
}
