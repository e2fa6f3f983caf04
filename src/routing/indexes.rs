//! A model's three views of the pods' caches, kept under one lock so a decision sees them
//! consistently:
//! - `events`: what pods report holding (vLLM KV events) — used for pods whose trust is `exact`;
//! - `recent`: what the router sent a pod in the last one to two `pending_ttl`s and the pod has
//!   not necessarily reported yet (a burst sharing a new prefix must not scatter before the first
//!   prefill ends) — combined with `events` for `exact` pods;
//! - `history`: every routing decision, LRU-bounded — the whole view for pods without trusted
//!   events (`history`, `degraded`).

use crate::discovery::Trust;
use crate::tokenizer::TokenSpace;
use prefix_index::{Blocks, Change, EventIndex, HashSeed, Matches, PodId, PrefixIndex};
use std::time::{Duration, Instant};

pub(super) struct Indexes {
    history: PrefixIndex,
    /// Two generations: entries live between one and two `pending_ttl`s.
    recent: [PrefixIndex; 2],
    rotated: Instant,
    pending_ttl: Duration,
    events: EventIndex,
}

/// Counts of what one batch of changes did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub stored: usize,
    pub removed: usize,
    pub cleared: usize,
    /// `BlockStored` dropped: parent unknown (a missed event) or malformed.
    pub dropped: usize,
}

/// One pod's leading matched blocks, from the views its trust allows.
pub(super) struct Lookup {
    history: Matches,
    recent: [Matches; 2],
    events: Matches,
}

impl Lookup {
    pub(super) fn matched(&self, pod: PodId, trust: Trust) -> usize {
        match trust {
            Trust::Exact => self.events.get(pod).max(self.recent[0].get(pod)).max(self.recent[1].get(pod)),
            Trust::History | Trust::Degraded => self.history.get(pod),
        }
    }
}

impl Indexes {
    pub(super) fn new(blocks_per_pod: usize, pending_ttl: Duration) -> Self {
        Self {
            history: PrefixIndex::new(blocks_per_pod),
            recent: [PrefixIndex::new(blocks_per_pod), PrefixIndex::new(blocks_per_pod)],
            rotated: Instant::now(),
            pending_ttl,
            events: EventIndex::new(),
        }
    }

    pub(super) fn lookup(&self, hashes: &[u64], any_exact: bool) -> Lookup {
        let none = || Matches::default();
        Lookup {
            history: self.history.lookup(hashes),
            recent: if any_exact {
                [self.recent[0].lookup(hashes), self.recent[1].lookup(hashes)]
            } else {
                [none(), none()]
            },
            events: if any_exact { self.events.lookup(hashes) } else { none() },
        }
    }

    /// A decision: the pod will hold these blocks (history, and — for a pod whose events are
    /// trusted, the only pods that view serves — pending until reported). The history remembers
    /// for the pod no more than `capacity` blocks, when its real cache is known.
    pub(super) fn record(&mut self, pod: PodId, hashes: &[u64], capacity: Option<usize>, trust: Trust) {
        self.history.set_capacity(pod, capacity);
        self.history.record(pod, hashes);
        // Every decision ages the pending view, wherever it went, so an exact pod's entries expire
        // while traffic goes elsewhere.
        if self.rotated.elapsed() >= self.pending_ttl {
            let [newer, older] = &mut self.recent;
            *older = std::mem::replace(newer, PrefixIndex::new(self.history.blocks_per_pod()));
            self.rotated = Instant::now();
        }
        if trust == Trust::Exact {
            self.recent[0].record(pod, hashes);
        }
    }

    /// Blocks attributed to a pod by the view its trust allows.
    pub(super) fn pod_blocks(&self, pod: PodId, trust: Trust) -> usize {
        match trust {
            Trust::Exact => self.events.pod_blocks(pod).max(self.recent[0].pod_blocks(pod)),
            Trust::History | Trust::Degraded => self.history.pod_blocks(pod),
        }
    }

    pub(super) fn remove_pod(&mut self, pod: PodId) {
        self.history.remove_pod(pod);
        for r in &mut self.recent {
            r.remove_pod(pod);
        }
        self.events.clear_pod(pod);
    }

    pub(super) fn pods(&self) -> Vec<PodId> {
        let mut pods: Vec<PodId> = self.history.pods().chain(self.events.pods()).collect();
        pods.sort_unstable();
        pods.dedup();
        pods
    }

    /// The pod's events are void (restart, lost events): it holds nothing we know of, including
    /// what was sent to it before.
    pub(super) fn forget_events(&mut self, pod: PodId) {
        self.events.clear_pod(pod);
        for r in &mut self.recent {
            r.remove_pod(pod);
        }
    }

    /// Applies a pod's changes; `model` seeds blocks that start a sequence (their LoRA name when
    /// they carry one), in the engine's token space, where engine-tokenized requests hash too.
    pub(super) fn apply(&mut self, model: &str, pod: PodId, changes: &[Change]) -> Applied {
        let mut out = Applied::default();
        for c in changes {
            match c {
                Change::Stored { parent, block_hashes, token_ids, block_size, lora_name, cache_salt, medium } => {
                    let name = lora_name.as_deref().unwrap_or(model);
                    let seed = HashSeed::new(name, cache_salt.as_deref(), TokenSpace::Engine.id());
                    let blocks = Blocks {
                        parent: *parent,
                        engine_hashes: block_hashes,
                        token_ids,
                        block_size: *block_size,
                        medium: *medium,
                    };
                    match self.events.store(pod, &blocks, seed) {
                        Ok(n) => out.stored += n,
                        Err(_) => out.dropped += 1,
                    }
                }
                Change::Removed { block_hashes, medium } => {
                    // An evicted block is not "sent, not yet reported" either: forget it there too.
                    let own = self.events.remove(pod, block_hashes, *medium);
                    for r in &mut self.recent {
                        r.forget(pod, &own);
                    }
                    out.removed += block_hashes.len();
                }
                Change::Cleared => {
                    self.forget_events(pod);
                    out.cleared += 1;
                }
            }
        }
        out
    }

    /// Blocks the pod reports holding.
    pub(super) fn event_blocks(&self, pod: PodId) -> usize {
        self.events.pod_blocks(pod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pods_with_trusted_events_keep_a_pending_view() {
        let mut idx = Indexes::new(100, Duration::from_secs(60));
        let (history, exact) = (PodId(1), PodId(2));
        idx.record(history, &[1, 2, 3], None, Trust::History);
        idx.record(exact, &[1, 2], None, Trust::Exact);
        assert_eq!((idx.recent[0].pod_blocks(history), idx.recent[0].pod_blocks(exact)), (0, 2));
        // Both are in the history, which serves pods without trusted events.
        let m = idx.lookup(&[1, 2, 3], true);
        assert_eq!((m.matched(history, Trust::History), m.matched(exact, Trust::History)), (3, 2));
        // An exact pod is credited what it was sent and has not reported yet.
        assert_eq!(m.matched(exact, Trust::Exact), 2);
        assert_eq!(m.matched(history, Trust::Exact), 0);
    }

    #[test]
    fn decisions_for_history_pods_still_age_the_pending_view() {
        let mut idx = Indexes::new(100, Duration::from_millis(20));
        let (history, exact) = (PodId(1), PodId(2));
        idx.record(exact, &[1, 2], None, Trust::Exact);
        // Two pending periods of traffic that goes elsewhere: the exact pod's entries expire.
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(25));
            idx.record(history, &[7], None, Trust::History);
        }
        assert_eq!(idx.lookup(&[1, 2], true).matched(exact, Trust::Exact), 0);
    }
}
