//! What each pod really holds, from its engine's KV-cache events. Blocks are keyed by the router's
//! own chained hash of the event's token ids (never the engine's hash, whose algorithm may be one
//! nothing outside Python reproduces), so event blocks and request blocks meet in one hash space;
//! each pod keeps engine hash → own hash to apply `BlockRemoved`.

use crate::hash::{extend_hashes, HashSeed};
use crate::index::{Matches, PodId};
use crate::Map as HashMap;

/// Where a block lives on the pod. Blocks offloaded off the GPU count for less: reloading them
/// is cheaper than recomputing, dearer than a GPU hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Medium {
    Gpu,
    /// CPU or any other offload tier.
    Offloaded,
}

impl Medium {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            None | Some("GPU" | "gpu") => Medium::Gpu,
            Some(_) => Medium::Offloaded,
        }
    }
}

/// One change to a pod's cache, as plain data (decoded from whatever wire the engine speaks).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Stored {
        /// The engine's hash of the block before the first (`None`: they start the sequence).
        parent: Option<u64>,
        block_hashes: Vec<u64>,
        token_ids: Vec<u32>,
        block_size: usize,
        lora_name: Option<String>,
        /// The request's `cache_salt` (from block 0's extra keys).
        cache_salt: Option<String>,
        medium: Medium,
    },
    Removed {
        block_hashes: Vec<u64>,
        medium: Medium,
    },
    Cleared,
}

/// An offloaded block counts as this share of a GPU block in [`EventIndex::lookup`].
pub const OFFLOADED_WEIGHT: f64 = 0.5;

#[derive(Debug, Default)]
struct PodBlocks {
    /// (engine hash, medium) → own hash.
    by_engine: HashMap<(u64, Medium), u64>,
}

/// The blocks of one `BlockStored`.
#[derive(Debug, Clone, Copy)]
pub struct Blocks<'a> {
    pub parent: Option<u64>,
    pub engine_hashes: &'a [u64],
    pub token_ids: &'a [u32],
    pub block_size: usize,
    pub medium: Medium,
}

#[derive(Debug, Default)]
pub struct EventIndex {
    /// Own hash → the pods holding it, with the medium.
    blocks: HashMap<u64, Vec<(PodId, Medium)>>,
    pods: HashMap<PodId, PodBlocks>,
}

/// Why a `BlockStored` was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Its parent block is not known for this pod (an event was missed): dropped, as the peers do.
    UnknownParent,
    /// Token ids are not `blocks × block_size`.
    Malformed,
}

impl EventIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a `BlockStored`: `engine_hashes[i]` names the block of
    /// `token_ids[i*block_size..(i+1)*block_size]`, chained after `parent` (an engine hash) or,
    /// when `parent` is `None`, from `seed` (the model or LoRA name and the salt).
    pub fn store(&mut self, pod: PodId, blocks: &Blocks<'_>, seed: HashSeed) -> Result<usize, StoreError> {
        let Blocks { parent, engine_hashes, token_ids, block_size, medium } = *blocks;
        // `block_size` comes off the wire: a huge one must not overflow the check.
        if block_size == 0 || engine_hashes.len().checked_mul(block_size) != Some(token_ids.len()) {
            return Err(StoreError::Malformed);
        }
        let start = match parent {
            None => seed.value(),
            // The parent may be in any medium: its own hash is the same.
            Some(p) => {
                let known = self.pods.get(&pod).and_then(|e| {
                    e.by_engine.get(&(p, Medium::Gpu)).or_else(|| e.by_engine.get(&(p, Medium::Offloaded))).copied()
                });
                known.ok_or(StoreError::UnknownParent)?
            }
        };
        let own = extend_hashes(start, token_ids, block_size);
        let entry = self.pods.entry(pod).or_default();
        for (engine, own) in engine_hashes.iter().zip(&own) {
            if entry.by_engine.insert((*engine, medium), *own).is_none() {
                let holders = self.blocks.entry(*own).or_default();
                if !holders.contains(&(pod, medium)) {
                    holders.push((pod, medium));
                }
            }
        }
        Ok(own.len())
    }

    /// Applies a `BlockRemoved` (blocks the pod no longer holds in `medium`); returns the own
    /// hashes removed, so other views of the pod can forget them too.
    pub fn remove(&mut self, pod: PodId, engine_hashes: &[u64], medium: Medium) -> Vec<u64> {
        let Some(entry) = self.pods.get_mut(&pod) else { return Vec::new() };
        let mut removed = Vec::new();
        for engine in engine_hashes {
            if let Some(own) = entry.by_engine.remove(&(*engine, medium)) {
                remove_holder(&mut self.blocks, own, (pod, medium));
                removed.push(own);
            }
        }
        removed
    }

    /// `AllBlocksCleared`, a restart, or a pod that left: it holds nothing.
    pub fn clear_pod(&mut self, pod: PodId) {
        if let Some(entry) = self.pods.remove(&pod) {
            for ((_, medium), own) in entry.by_engine {
                remove_holder(&mut self.blocks, own, (pod, medium));
            }
        }
    }

    /// For each pod, its leading run of `hashes`, offloaded blocks counted at
    /// [`OFFLOADED_WEIGHT`] (rounded down).
    pub fn lookup(&self, hashes: &[u64]) -> Matches {
        // (pod, blocks in the run, weighted count)
        let mut runs: Vec<(PodId, usize, f64)> = Vec::new();
        for (i, h) in hashes.iter().enumerate() {
            let Some(holders) = self.blocks.get(h) else { break };
            let mut advanced = false;
            if i == 0 {
                for (pod, medium) in holders {
                    let w = weight(*medium);
                    match runs.iter_mut().find(|r| r.0 == *pod) {
                        // Held in both media: the better one counts.
                        Some(r) => r.2 = r.2.max(w),
                        None => runs.push((*pod, 1, w)),
                    }
                    advanced = true;
                }
            } else {
                for r in &mut runs {
                    if r.1 != i {
                        continue;
                    }
                    let best = holders.iter().filter(|(p, _)| *p == r.0).map(|(_, m)| weight(*m)).fold(0.0, f64::max);
                    if best > 0.0 {
                        r.1 += 1;
                        r.2 += best;
                        advanced = true;
                    }
                }
            }
            if !advanced {
                break;
            }
        }
        Matches { by_pod: runs.into_iter().map(|(p, _, w)| (p, w.floor() as usize)).collect() }
    }

    /// Blocks this pod is known to hold (all media).
    pub fn pod_blocks(&self, pod: PodId) -> usize {
        self.pods.get(&pod).map_or(0, |p| p.by_engine.len())
    }

    pub fn pods(&self) -> impl Iterator<Item = PodId> + '_ {
        self.pods.keys().copied()
    }

    /// Distinct (own hash, pod, medium) entries: the index's size.
    pub fn len(&self) -> usize {
        self.pods.values().map(|p| p.by_engine.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

fn weight(m: Medium) -> f64 {
    match m {
        Medium::Gpu => 1.0,
        Medium::Offloaded => OFFLOADED_WEIGHT,
    }
}

fn remove_holder(blocks: &mut HashMap<u64, Vec<(PodId, Medium)>>, own: u64, holder: (PodId, Medium)) {
    if let Some(holders) = blocks.get_mut(&own) {
        holders.retain(|h| *h != holder);
        if holders.is_empty() {
            blocks.remove(&own);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::block_hashes;

    const A: PodId = PodId(1);
    const B: PodId = PodId(2);

    #[allow(clippy::too_many_arguments)]
    fn put(
        idx: &mut EventIndex,
        pod: PodId,
        parent: Option<u64>,
        engine_hashes: &[u64],
        token_ids: &[u32],
        block_size: usize,
        seed: HashSeed,
        medium: Medium,
    ) -> Result<usize, StoreError> {
        idx.store(pod, &Blocks { parent, engine_hashes, token_ids, block_size, medium }, seed)
    }

    fn seed() -> HashSeed {
        HashSeed::new("m", None, 0x0e0e)
    }

    #[test]
    fn a_block_size_off_the_wire_that_would_overflow_is_refused_not_a_panic() {
        // Found by `fuzz/fuzz_targets/kv_event_batch.rs`: 4 hashes × 2^62 wrapped to 0 tokens.
        let mut idx = EventIndex::new();
        let hashes = [1, 2, 3, 4];
        for block_size in [usize::MAX, 1 << 62, usize::MAX / 2 + 1] {
            let blocks =
                Blocks { parent: None, engine_hashes: &hashes, token_ids: &[], block_size, medium: Medium::Gpu };
            assert_eq!(idx.store(A, &blocks, HashSeed::new("m", None, 0)), Err(StoreError::Malformed));
        }
    }

    #[test]
    fn stored_blocks_match_the_request_s_own_hashes_and_removals_undo_them() {
        let mut idx = EventIndex::new();
        let tokens: Vec<u32> = (0..48).collect();
        // Two events: blocks 0-1 from the start, then block 2 chained on the engine's block 1.
        assert_eq!(put(&mut idx, A, None, &[900, 901], &tokens[..32], 16, seed(), Medium::Gpu), Ok(2));
        assert_eq!(put(&mut idx, A, Some(901), &[902], &tokens[32..], 16, seed(), Medium::Gpu), Ok(1));
        let request = block_hashes(&tokens, 16, seed());
        assert_eq!(idx.lookup(&request).get(A), 3);
        idx.remove(A, &[901], Medium::Gpu);
        assert_eq!(idx.lookup(&request).get(A), 1, "a gap ends the run");
        assert_eq!(
            put(&mut idx, B, Some(777), &[1], &tokens[..16], 16, seed(), Medium::Gpu),
            Err(StoreError::UnknownParent)
        );
        assert_eq!(put(&mut idx, B, None, &[1, 2], &tokens[..16], 16, seed(), Medium::Gpu), Err(StoreError::Malformed));
        idx.clear_pod(A);
        assert!(idx.is_empty());
        assert_eq!(idx.lookup(&request).best(), 0);
    }

    #[test]
    fn another_seed_never_matches_and_offloaded_blocks_count_for_less() {
        let mut idx = EventIndex::new();
        let tokens: Vec<u32> = (0..64).collect();
        put(&mut idx, A, None, &[1, 2, 3, 4], &tokens, 16, HashSeed::new("m", Some("tenant-a"), 0x0e0e), Medium::Gpu)
            .expect("stored");
        assert_eq!(idx.lookup(&block_hashes(&tokens, 16, seed())).get(A), 0, "salted blocks are another space");
        put(&mut idx, B, None, &[1, 2, 3, 4], &tokens, 16, seed(), Medium::Offloaded).expect("stored");
        assert_eq!(idx.lookup(&block_hashes(&tokens, 16, seed())).get(B), 2, "4 offloaded blocks weigh 2");
        put(&mut idx, B, None, &[1, 2, 3, 4], &tokens, 16, seed(), Medium::Gpu).expect("stored");
        assert_eq!(idx.lookup(&block_hashes(&tokens, 16, seed())).get(B), 4, "held on GPU too: the better counts");
    }
}
