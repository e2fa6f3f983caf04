//! Chained 64-bit block hashes (xxh3), as vLLM's automatic prefix caching names blocks: only full
//! blocks count, and each hash covers its parent, so equal hashes mean equal prefixes.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// What separates otherwise equal token blocks: the model (or LoRA adapter) name, the request's
/// `cache_salt`, and the token space the ids come from (engine-native, a local tokenizer, or the
/// byte approximation), so tokens of different tokenizers never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HashSeed(u64);

impl HashSeed {
    pub fn new(model: &str, cache_salt: Option<&str>, token_space: u64) -> Self {
        let mut seed = xxh3_64(model.as_bytes()) ^ token_space.rotate_left(17);
        if let Some(salt) = cache_salt {
            // A distinct domain for "salted" so that no salt equals "unsalted".
            seed = xxh3_64_with_seed(salt.as_bytes(), seed ^ 0x5a17_5a17_5a17_5a17);
        }
        Self(seed)
    }

    pub fn value(self) -> u64 {
        self.0
    }
}

/// Hashes of the full blocks of `tokens`; a partial last block is not cached by the engine and
/// is not hashed here.
pub fn block_hashes(tokens: &[u32], block_size: usize, seed: HashSeed) -> Vec<u64> {
    extend_hashes(seed.0, tokens, block_size)
}

/// The chain continued from a parent block's hash (`seed.value()` for a sequence's first block).
pub fn extend_hashes(parent: u64, tokens: &[u32], block_size: usize) -> Vec<u64> {
    let mut parent = parent;
    let block_size = block_size.max(1);
    // Blocks of up to 64 tokens (vLLM's sizes: 16 by default, at most 32 on CUDA) are laid out on
    // the stack; larger ones in a buffer.
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let bytes: &mut [u8] = match stack.get_mut(..block_size * 4) {
        Some(b) => b,
        None => {
            heap.resize(block_size * 4, 0);
            &mut heap
        }
    };
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            for (out, t) in bytes.chunks_exact_mut(4).zip(block) {
                out.copy_from_slice(&t.to_le_bytes());
            }
            parent = xxh3_64_with_seed(bytes, parent);
            parent
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_blocks_are_hashed_and_prefixes_share_hashes() {
        let seed = HashSeed::new("m", None, 0);
        let a: Vec<u32> = (0..40).collect();
        let b: Vec<u32> = (0..47).collect();
        assert_eq!(block_hashes(&a, 16, seed).len(), 2);
        assert_eq!(block_hashes(&a, 16, seed), block_hashes(&b, 16, seed));
        let mut c = a.clone();
        c[3] = 99;
        let hc = block_hashes(&c, 16, seed);
        assert!(hc.iter().zip(block_hashes(&a, 16, seed)).all(|(x, y)| *x != y), "a change poisons every later block");
    }

    #[test]
    fn model_salt_and_token_space_separate_equal_tokens() {
        let t: Vec<u32> = (0..16).collect();
        let seeds = [
            HashSeed::new("m", None, 0),
            HashSeed::new("m-lora", None, 0),
            HashSeed::new("m", Some("s"), 0),
            HashSeed::new("m", Some(""), 0),
            HashSeed::new("m", None, 1),
        ];
        let hashes: std::collections::HashSet<u64> = seeds.iter().map(|s| block_hashes(&t, 16, *s)[0]).collect();
        assert_eq!(hashes.len(), seeds.len());
    }
}
