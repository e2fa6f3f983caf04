//! The simulated KV cache: a pool of `num_gpu_blocks` blocks modelled on vLLM's automatic prefix
//! caching. Full blocks of `block_size` tokens are named by a hash chained on their parent's, so a
//! block is only a hit when everything before it matches too. Running requests hold their blocks;
//! finished requests' full blocks stay cached and are evicted least-recently-used first, the tail
//! of a sequence before its head (as vLLM frees them in reverse order).

use crate::kv_events::KvEvent;
use crate::kv_hash::BlockKeys;
use std::collections::{BTreeMap, HashMap};

/// A prompt's full blocks as the engine names them (`sha256_cbor` event ids, chained, LoRA and
/// `cache_salt` in the extra keys), with what a `BlockStored` event says about them.
#[derive(Debug, Clone)]
pub(crate) struct Seq {
    pub hashes: Vec<u64>,
    pub tokens: Vec<u32>,
    pub block_size: usize,
    pub keys: BlockKeys,
}

impl Seq {
    pub(crate) fn new(tokens: &[u32], block_size: usize, keys: BlockKeys) -> Self {
        let hashes = crate::kv_hash::block_hashes(tokens, block_size, &keys);
        Self { hashes, tokens: tokens.to_vec(), block_size, keys }
    }

    /// Per block: nil, or the untagged extra values (vLLM's `to_event_extra_keys`); `None` when
    /// no block has any.
    fn event_extra_keys(&self, from: usize, to: usize) -> Option<Vec<Option<Vec<String>>>> {
        let keys: Vec<Option<Vec<String>>> = (from..to)
            .map(|i| {
                let extras = self.keys.extras(i);
                (!extras.is_empty()).then(|| extras.into_iter().map(|e| e.value).collect())
            })
            .collect();
        keys.iter().any(Option::is_some).then_some(keys)
    }
}

#[derive(Debug)]
struct Block {
    refs: u32,
    /// Position in `free` while `refs == 0`.
    free_key: Option<u64>,
}

/// What a running request holds; handed back to [`BlockPool::release`].
#[derive(Debug, Default)]
pub struct Allocation {
    /// Hashed (shareable) blocks this request references.
    hashed: Vec<u64>,
    /// Hashes of full blocks it computes; cached when its prefill ends.
    pending: Vec<u64>,
    /// Blocks held without a hash: pending full blocks, the partial tail, decode space.
    anon: usize,
    /// Leading prompt tokens found in the cache at admission.
    pub cached_tokens: usize,
}

#[derive(Debug)]
pub struct BlockPool {
    capacity: usize,
    block_size: usize,
    blocks: HashMap<u64, Block>,
    /// Free cached blocks by eviction order (smallest key goes first).
    free: BTreeMap<u64, u64>,
    tick: u64,
    anon: usize,
    /// What changed since the last step was published (`None`: events off).
    events: Option<Vec<KvEvent>>,
}

impl BlockPool {
    pub fn new(capacity: usize, block_size: usize) -> Self {
        Self { capacity, block_size, blocks: HashMap::new(), free: BTreeMap::new(), tick: 0, anon: 0, events: None }
    }

    /// Records KV events from now on (drained by [`BlockPool::take_events`]).
    pub(crate) fn with_events(mut self) -> Self {
        self.events = Some(Vec::new());
        self
    }

    /// The events since the last call, in the order they happened.
    pub(crate) fn take_events(&mut self) -> Vec<KvEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// `POST /reset_prefix_cache`: drops every cached block when none is in use (vLLM refuses
    /// while requests hold blocks). Emits `AllBlocksCleared`.
    pub(crate) fn reset(&mut self) -> bool {
        if self.blocks.values().any(|b| b.refs > 0) || self.anon > 0 {
            return false;
        }
        self.blocks.clear();
        self.free.clear();
        if let Some(ev) = self.events.as_mut() {
            ev.push(KvEvent::AllCleared);
        }
        true
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks held by running requests, as a fraction of the pool (vLLM's `kv_cache_usage_perc`).
    pub fn usage(&self) -> f64 {
        let held = self.blocks.len() - self.free.len() + self.anon;
        if self.capacity == 0 {
            0.0
        } else {
            held as f64 / self.capacity as f64
        }
    }

    /// Whether the pool holds the block named `hash` now (in use or free and not yet evicted).
    pub fn holds(&self, hash: u64) -> bool {
        self.blocks.contains_key(&hash)
    }

    /// How many leading blocks of `hashes` the pool holds now.
    pub fn cached_blocks(&self, hashes: &[u64]) -> usize {
        hashes.iter().take_while(|h| self.holds(**h)).count()
    }

    /// Blocks a request of `prompt_tokens` + `output_tokens` needs in all.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Admits a request if the pool can hold it, taking references on its cached prefix and
    /// evicting free blocks for the rest. `None` means it must wait for running requests to end.
    pub fn admit(&mut self, hashes: &[u64], prompt_tokens: usize, output_tokens: usize) -> Option<Allocation> {
        let mut hit = self.cached_blocks(hashes);
        // vLLM always recomputes the last prompt token, so a fully cached prompt gives back a block.
        if hit > 0 && hit * self.block_size >= prompt_tokens {
            hit -= 1;
        }
        let total = self.blocks_for(prompt_tokens + output_tokens);
        let new_blocks = total - hit;
        let reusable_free = hashes[..hit].iter().filter(|h| self.blocks.get(h).is_some_and(|b| b.refs == 0)).count();
        let in_pool = self.blocks.len() + self.anon;
        let evictable = self.free.len() - reusable_free;
        if in_pool + new_blocks > self.capacity + evictable {
            return None;
        }
        for h in &hashes[..hit] {
            if let Some(block) = self.blocks.get_mut(h) {
                if let Some(key) = block.free_key.take() {
                    self.free.remove(&key);
                }
                block.refs += 1;
            }
        }
        while self.blocks.len() + self.anon + new_blocks > self.capacity {
            let Some((_, victim)) = self.free.pop_first() else {
                break;
            };
            self.blocks.remove(&victim);
            if let Some(ev) = self.events.as_mut() {
                ev.push(KvEvent::Removed { hash: victim });
            }
        }
        self.anon += new_blocks;
        Some(Allocation {
            hashed: hashes[..hit].to_vec(),
            pending: hashes[hit..].to_vec(),
            anon: new_blocks,
            cached_tokens: hit * self.block_size,
        })
    }

    /// Prefill is done: the request's computed full blocks become cached (shared) blocks.
    pub(crate) fn commit_prefill(&mut self, alloc: &mut Allocation, seq: &Seq) {
        let first = alloc.hashed.len();
        let mut stored: Vec<usize> = Vec::new();
        for h in std::mem::take(&mut alloc.pending) {
            alloc.anon -= 1;
            self.anon -= 1;
            match self.blocks.get_mut(&h) {
                // Another request computed the same block meanwhile: share it, free our copy.
                Some(block) => {
                    if let Some(key) = block.free_key.take() {
                        self.free.remove(&key);
                    }
                    block.refs += 1;
                }
                None => {
                    self.blocks.insert(h, Block { refs: 1, free_key: None });
                    stored.push(alloc.hashed.len());
                }
            }
            alloc.hashed.push(h);
        }
        if self.events.is_some() {
            self.stored_events(seq, first, &stored);
        }
    }

    /// One `BlockStored` per run of consecutive newly cached blocks, parent = the block before.
    fn stored_events(&mut self, seq: &Seq, first: usize, stored: &[usize]) {
        let _ = first;
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for &i in stored {
            match runs.last_mut() {
                Some((_, end)) if *end == i => *end = i + 1,
                _ => runs.push((i, i + 1)),
            }
        }
        let Some(events) = self.events.as_mut() else { return };
        for (from, to) in runs {
            events.push(KvEvent::Stored {
                block_hashes: seq.hashes[from..to].to_vec(),
                parent: from.checked_sub(1).map(|p| seq.hashes[p]),
                token_ids: seq.tokens[from * seq.block_size..to * seq.block_size].to_vec(),
                block_size: seq.block_size,
                lora_name: seq.keys.lora.clone(),
                extra_keys: seq.event_extra_keys(from, to),
            });
        }
    }

    /// The request ended: its blocks are free, its full blocks stay cached until evicted.
    pub fn release(&mut self, alloc: Allocation) {
        self.anon -= alloc.anon;
        // Free the tail first so that it is evicted first: the head is the most shareable part.
        for h in alloc.hashed.iter().rev() {
            if let Some(block) = self.blocks.get_mut(h) {
                block.refs -= 1;
                if block.refs == 0 {
                    self.tick += 1;
                    block.free_key = Some(self.tick);
                    self.free.insert(self.tick, *h);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(tokens: &[u32], salt: u64) -> Seq {
        let keys = BlockKeys { lora: None, cache_salt: (salt != 0).then(|| salt.to_string()) };
        Seq::new(tokens, 16, keys)
    }

    fn block_hashes(tokens: &[u32], _: usize, salt: u64) -> Vec<u64> {
        seq(tokens, salt).hashes
    }

    fn run(pool: &mut BlockPool, tokens: &[u32], salt: u64) -> usize {
        let seq = seq(tokens, salt);
        let mut alloc = pool.admit(&seq.hashes, tokens.len(), 0).expect("fits");
        let cached = alloc.cached_tokens;
        pool.commit_prefill(&mut alloc, &seq);
        pool.release(alloc);
        cached
    }

    #[test]
    fn second_identical_prompt_hits_every_block_but_the_recomputed_last() {
        let mut pool = BlockPool::new(1000, 16);
        let prompt: Vec<u32> = (0..2000).collect();
        assert_eq!(run(&mut pool, &prompt, 0), 0);
        assert_eq!(run(&mut pool, &prompt, 0), 1984);
        let longer: Vec<u32> = (0..2010).collect();
        assert_eq!(run(&mut pool, &longer, 0), 2000);
    }

    #[test]
    fn salt_and_divergence_separate_blocks() {
        let mut pool = BlockPool::new(1000, 16);
        let prompt: Vec<u32> = (0..100).collect();
        run(&mut pool, &prompt, 0);
        assert_eq!(run(&mut pool, &prompt, 7), 0, "another seed shares nothing");
        let mut forked = prompt.clone();
        forked[40] = 9999;
        assert_eq!(run(&mut pool, &forked, 0), 32, "blocks after a difference never match");
    }

    #[test]
    fn least_recently_used_is_evicted_when_full() {
        // Room for two 10-block prompts plus one partial block.
        let mut pool = BlockPool::new(21, 16);
        let a: Vec<u32> = (0..161).collect();
        let b: Vec<u32> = (1000..1161).collect();
        let c: Vec<u32> = (2000..2161).collect();
        run(&mut pool, &a, 0);
        run(&mut pool, &b, 0);
        assert_eq!(run(&mut pool, &a, 0), 160, "a still cached");
        run(&mut pool, &c, 0); // evicts b, the least recently used
        assert_eq!(run(&mut pool, &a, 0), 160);
        assert_eq!(run(&mut pool, &b, 0), 0);
    }

    #[test]
    fn running_requests_hold_blocks_and_block_admission() {
        let mut pool = BlockPool::new(10, 16);
        let a: Vec<u32> = (0..128).collect();
        let ha = block_hashes(&a, 16, 0);
        let held = pool.admit(&ha, 128, 0).expect("fits");
        assert!((pool.usage() - 0.8).abs() < 1e-9);
        let b: Vec<u32> = (500..628).collect();
        assert!(pool.admit(&block_hashes(&b, 16, 0), 128, 0).is_none(), "no room while a runs");
        pool.release(held);
        assert!(pool.admit(&block_hashes(&b, 16, 0), 128, 0).is_some());
    }
}
