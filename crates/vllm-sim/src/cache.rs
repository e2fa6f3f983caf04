//! The simulated KV cache: a pool of `num_gpu_blocks` blocks modelled on vLLM's automatic prefix
//! caching. Full blocks of `block_size` tokens are named by a hash chained on their parent's, so a
//! block is only a hit when everything before it matches too. Running requests hold their blocks;
//! finished requests' full blocks stay cached and are evicted least-recently-used first, the tail
//! of a sequence before its head (as vLLM frees them in reverse order).

use std::collections::{BTreeMap, HashMap};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Chained block hashes of the full blocks of `tokens`. `seed` carries what separates otherwise
/// equal blocks: the LoRA adapter and `cache_salt`.
pub fn block_hashes(tokens: &[u32], block_size: usize, seed: u64) -> Vec<u64> {
    let mut parent = seed;
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            let mut bytes = Vec::with_capacity(block.len() * 4);
            for t in block {
                bytes.extend_from_slice(&t.to_le_bytes());
            }
            parent = xxh3_64_with_seed(&bytes, parent);
            parent
        })
        .collect()
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
}

impl BlockPool {
    pub fn new(capacity: usize, block_size: usize) -> Self {
        Self { capacity, block_size, blocks: HashMap::new(), free: BTreeMap::new(), tick: 0, anon: 0 }
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
    pub fn commit_prefill(&mut self, alloc: &mut Allocation) {
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
                }
            }
            alloc.hashed.push(h);
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

    fn run(pool: &mut BlockPool, tokens: &[u32], seed: u64) -> usize {
        let hashes = block_hashes(tokens, 16, seed);
        let mut alloc = pool.admit(&hashes, tokens.len(), 0).expect("fits");
        let cached = alloc.cached_tokens;
        pool.commit_prefill(&mut alloc);
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
