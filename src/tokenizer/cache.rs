//! Exact request → tokens, bounded in bytes, least recently used out first. Retries and repeated
//! prompts cost no tokenizer call. Keys are 128-bit hashes of (token space, model, the exact
//! `/tokenize` request), so nothing of the prompt is kept but its tokens.

use super::TokenSpace;
use lru::LruCache;
use std::sync::{Arc, Mutex};

/// Cached tokens and the space they belong to.
pub(super) type Cached = (TokenSpace, Arc<[u32]>);

pub struct TokenCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    map: LruCache<u128, Cached>,
    bytes: usize,
}

/// Per-entry bookkeeping beyond the ids themselves.
const OVERHEAD: usize = 64;

impl TokenCache {
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes, inner: Mutex::new(Inner { map: LruCache::unbounded(), bytes: 0 }) }
    }

    pub fn key(space: &str, model: &str, request: &[u8]) -> u128 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(space.as_bytes());
        h.update(&[0]);
        h.update(model.as_bytes());
        h.update(&[0]);
        h.update(request);
        h.digest128()
    }

    /// False when configured with no room (`0` bytes): nothing is kept.
    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    pub fn get(&self, key: u128) -> Option<Cached> {
        if !self.enabled() {
            return None;
        }
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).map.get(&key).cloned()
    }

    pub fn insert(&self, key: u128, value: Cached) {
        let size = value.1.len() * 4 + OVERHEAD;
        if size > self.max_bytes {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = inner.map.put(key, value) {
            inner.bytes -= old.1.len() * 4 + OVERHEAD;
        }
        inner.bytes += size;
        while inner.bytes > self.max_bytes {
            let Some((_, v)) = inner.map.pop_lru() else { break };
            inner.bytes -= v.1.len() * 4 + OVERHEAD;
        }
    }

    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_byte_budget_dropping_the_least_recent() {
        let cache = TokenCache::new(3 * (400 + OVERHEAD));
        let ids: Cached = (TokenSpace::Engine, vec![7u32; 100].into());
        for k in 0..3u128 {
            cache.insert(k, ids.clone());
        }
        assert!(cache.get(0).is_some()); // 0 is now the most recent
        cache.insert(3, ids.clone());
        assert!(cache.get(1).is_none(), "1 was least recent");
        assert!(cache.get(0).is_some() && cache.get(3).is_some());
        assert!(cache.bytes() <= 3 * (400 + OVERHEAD));
        assert_ne!(TokenCache::key("engine", "m", b"x"), TokenCache::key("local", "m", b"x"));
    }
}
