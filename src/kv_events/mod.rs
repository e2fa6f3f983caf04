//! vLLM KV-cache events: what each pod really holds. `decode` reads the wire; `subscriber` keeps
//! one subscription per ready vLLM pod (following discovery), recovers from gaps and restarts by
//! replay, and feeds the routing side plain changes; each pod's trust state says whether routing
//! may use its events (`exact`) or must fall back to the routing-history index.

pub mod decode;
pub mod subscriber;

use crate::discovery::{Endpoint, Engine, Registry, Trust};
use crate::metrics::Metrics;
use crate::routing::Router;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

pub use subscriber::Settings;

/// Where a subscriber hands what it reads.
pub trait Sink: Send + Sync {
    fn apply(&self, pod: &Endpoint, batch: &decode::Batch);
    /// The pod's reported cache is void (restart, full resync).
    fn forget(&self, pod: &Endpoint);
    /// A counted occurrence (`gap`, `replay_ok`, `replay_failed`, …).
    fn counted(&self, what: &'static str);
}

/// The router's index, fed by events, with what they did counted.
pub struct RouterSink {
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
}

impl Sink for RouterSink {
    fn apply(&self, pod: &Endpoint, batch: &decode::Batch) {
        let applied = self.router.apply_events(&pod.model, pod.id, &batch.changes);
        let m = &self.metrics.kv_events;
        m.with_label_values(&["stored_blocks"]).inc_by(applied.stored as u64);
        m.with_label_values(&["removed_blocks"]).inc_by(applied.removed as u64);
        m.with_label_values(&["cleared"]).inc_by(applied.cleared as u64);
        m.with_label_values(&["dropped_unknown_parent"]).inc_by(applied.dropped as u64);
        m.with_label_values(&["batches"]).inc();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        if batch.ts > 0.0 {
            self.metrics.kv_event_lag.observe((now - batch.ts).max(0.0));
        }
    }

    fn forget(&self, pod: &Endpoint) {
        self.router.forget_events(&pod.model, pod.id);
    }

    fn counted(&self, what: &'static str) {
        self.metrics.kv_events.with_label_values(&[what]).inc();
    }
}

/// One subscription per ready vLLM pod, started and stopped as discovery changes, until `stop`.
pub async fn follow_discovery(
    registry: Arc<Registry>,
    sink: Arc<dyn Sink>,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = registry.subscribe();
    // Pod key → the sender whose drop stops its subscription.
    let mut running: HashMap<(String, prefix_index::PodId), watch::Sender<bool>> = HashMap::new();
    loop {
        let snapshot = Arc::clone(&changes.borrow_and_update());
        let live: Vec<&Arc<Endpoint>> = snapshot.endpoints().filter(|e| e.engine == Engine::Vllm).collect();
        running.retain(|k, _| live.iter().any(|e| e.key == k.0 && e.id == k.1));
        for e in live {
            running.entry((e.key.clone(), e.id)).or_insert_with(|| {
                let (tx, rx) = watch::channel(false);
                e.set_trust(Trust::History);
                // Owned by `running`: dropping its sender (pod gone, or shutdown) ends it.
                tokio::spawn(subscriber::follow(Arc::clone(e), Arc::clone(&sink), settings.clone(), rx));
                tx
            });
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}
