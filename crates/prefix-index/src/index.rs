//! Per-model index: block hash → the pods we routed that block to. Each pod holds at most
//! `blocks_per_pod` entries and forgets its least recently used block first, approximating the
//! pod's own KV-cache eviction.

use crate::Map as HashMap;
use lru::LruCache;

/// A pod as the index knows it: a small id handed out by discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId(pub u32);

/// Leading blocks each pod holds for one prompt. Pods absent hold none.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Matches {
    pub by_pod: Vec<(PodId, usize)>,
}

impl Matches {
    pub fn get(&self, pod: PodId) -> usize {
        self.by_pod.iter().find(|(p, _)| *p == pod).map_or(0, |(_, n)| *n)
    }
    pub fn best(&self) -> usize {
        self.by_pod.iter().map(|(_, n)| *n).max().unwrap_or(0)
    }
}

#[derive(Debug)]
pub struct PrefixIndex {
    blocks: HashMap<u64, Vec<PodId>>,
    pods: HashMap<PodId, LruCache<u64, ()>>,
    blocks_per_pod: usize,
    /// Pods whose real cache is smaller than `blocks_per_pod`: they forget sooner, as they evict.
    capacity: HashMap<PodId, usize>,
}

impl PrefixIndex {
    pub fn new(blocks_per_pod: usize) -> Self {
        Self {
            blocks: HashMap::default(),
            pods: HashMap::default(),
            blocks_per_pod: blocks_per_pod.max(1),
            capacity: HashMap::default(),
        }
    }

    /// The blocks `pod`'s cache really holds (`None`: unknown, `blocks_per_pod` applies). The
    /// smaller of the two bounds what the index remembers for the pod from its next record on.
    pub fn set_capacity(&mut self, pod: PodId, blocks: Option<usize>) {
        match blocks {
            Some(b) => self.capacity.insert(pod, b.max(1)),
            None => self.capacity.remove(&pod),
        };
    }

    /// The most blocks each pod may hold here.
    pub fn blocks_per_pod(&self) -> usize {
        self.blocks_per_pod
    }

    /// For each pod, how many of `hashes` it holds from the start without a gap.
    pub fn lookup(&self, hashes: &[u64]) -> Matches {
        let mut by_pod: Vec<(PodId, usize)> = Vec::new();
        for (i, h) in hashes.iter().enumerate() {
            let Some(holders) = self.blocks.get(h) else {
                break;
            };
            let mut advanced = false;
            if i == 0 {
                by_pod.extend(holders.iter().map(|p| (*p, 1)));
                advanced = !holders.is_empty();
            } else {
                for (pod, n) in &mut by_pod {
                    if *n == i && holders.contains(pod) {
                        *n += 1;
                        advanced = true;
                    }
                }
            }
            if !advanced {
                break;
            }
        }
        Matches { by_pod }
    }

    /// Records that `pod` will hold `hashes` (it is computing them now).
    pub fn record(&mut self, pod: PodId, hashes: &[u64]) {
        let cap = self.capacity.get(&pod).map_or(self.blocks_per_pod, |c| (*c).min(self.blocks_per_pod));
        let lru = self.pods.entry(pod).or_insert_with(LruCache::unbounded);
        // Touch head-first so the tail is the least recently used, as the engine evicts it.
        for h in hashes.iter().rev() {
            if lru.put(*h, ()).is_none() {
                let holders = self.blocks.entry(*h).or_default();
                if !holders.contains(&pod) {
                    holders.push(pod);
                }
            }
        }
        while lru.len() > cap {
            let Some((victim, ())) = lru.pop_lru() else {
                break;
            };
            remove_holder(&mut self.blocks, victim, pod);
        }
    }

    /// Forgets that `pod` holds these blocks (it reported evicting them).
    pub fn forget(&mut self, pod: PodId, hashes: &[u64]) {
        let Some(lru) = self.pods.get_mut(&pod) else { return };
        for h in hashes {
            if lru.pop(h).is_some() {
                remove_holder(&mut self.blocks, *h, pod);
            }
        }
    }

    /// Forgets everything about a pod that left discovery.
    pub fn remove_pod(&mut self, pod: PodId) {
        self.capacity.remove(&pod);
        if let Some(lru) = self.pods.remove(&pod) {
            for (h, ()) in &lru {
                remove_holder(&mut self.blocks, *h, pod);
            }
        }
    }

    pub fn pods(&self) -> impl Iterator<Item = PodId> + '_ {
        self.pods.keys().copied()
    }

    /// Distinct blocks indexed.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Blocks recorded for one pod.
    pub fn pod_blocks(&self, pod: PodId) -> usize {
        self.pods.get(&pod).map_or(0, LruCache::len)
    }
}

fn remove_holder(blocks: &mut HashMap<u64, Vec<PodId>>, hash: u64, pod: PodId) {
    if let Some(holders) = blocks.get_mut(&hash) {
        holders.retain(|p| *p != pod);
        if holders.is_empty() {
            blocks.remove(&hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PodId = PodId(1);
    const B: PodId = PodId(2);

    #[test]
    fn lookup_counts_leading_blocks_per_pod() {
        let mut idx = PrefixIndex::new(100);
        idx.record(A, &[1, 2, 3, 4]);
        idx.record(B, &[1, 2, 9]);
        let m = idx.lookup(&[1, 2, 3, 5]);
        assert_eq!((m.get(A), m.get(B), m.best()), (3, 2, 3));
        assert_eq!(idx.lookup(&[7, 1, 2]).best(), 0, "a gap at the start matches nothing");
    }

    #[test]
    fn a_gap_ends_a_pods_match_while_others_go_on() {
        // B holds blocks 1 and 3 but not 2; A holds all three, so the walk goes past block 2.
        let mut gap = PrefixIndex::new(100);
        gap.record(A, &[1, 2, 3]);
        gap.record(B, &[1]);
        gap.record(B, &[3]);
        let m = gap.lookup(&[1, 2, 3]);
        assert_eq!((m.get(A), m.get(B)), (3, 1), "no credit for B's block 3 past its gap");
    }

    #[test]
    fn a_pod_with_a_smaller_real_cache_forgets_sooner_than_the_default() {
        let mut idx = PrefixIndex::new(100);
        let (small, big) = (PodId(1), PodId(2));
        idx.set_capacity(small, Some(4));
        let hashes: Vec<u64> = (0..10).collect();
        idx.record(small, &hashes);
        idx.record(big, &hashes);
        assert_eq!(idx.pod_blocks(small), 4, "the small pod keeps only what its cache holds");
        assert_eq!(idx.pod_blocks(big), 10);
        // Head-first touch: the tail was evicted, so the prefix still matches on the small pod.
        assert_eq!(idx.lookup(&hashes).get(small), 4);
        idx.set_capacity(small, Some(1000));
        idx.record(small, &hashes);
        assert_eq!(idx.pod_blocks(small), 10, "never above the index's own bound either way");
    }

    #[test]
    fn each_pod_forgets_its_least_recent_blocks_beyond_capacity() {
        let mut idx = PrefixIndex::new(4);
        idx.record(A, &[1, 2, 3]);
        idx.record(A, &[10, 11]);
        // Capacity 4: the oldest prompt's tail (3) went first; its head (1, 2) stays.
        assert_eq!(idx.pod_blocks(A), 4);
        assert_eq!(idx.lookup(&[1, 2, 3]).get(A), 2);
        assert_eq!(idx.lookup(&[10, 11]).get(A), 2);
        idx.record(A, &[20, 21, 22]);
        assert_eq!(idx.lookup(&[1]).get(A), 0);
        assert_eq!(idx.len(), 4);
    }

    #[test]
    fn removed_pods_are_purged() {
        let mut idx = PrefixIndex::new(10);
        idx.record(A, &[1, 2]);
        idx.record(B, &[1]);
        idx.remove_pod(A);
        let m = idx.lookup(&[1, 2]);
        assert_eq!((m.get(A), m.get(B)), (0, 1));
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.pods().collect::<Vec<_>>(), vec![B]);
    }
}
