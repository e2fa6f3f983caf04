//! Any bytes as a KV-event batch payload: decoded or refused, never a panic; what decodes applies
//! to an index without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prefix_index::{Blocks, Change, EventIndex, HashSeed, PodId};
use prefix_router::kv_events::decode;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = decode::batch(data) else { return };
    let mut index = EventIndex::new();
    for c in &batch.changes {
        match c {
            Change::Stored { parent, block_hashes, token_ids, block_size, medium, .. } => {
                let blocks = Blocks {
                    parent: *parent,
                    engine_hashes: block_hashes,
                    token_ids,
                    block_size: *block_size,
                    medium: *medium,
                };
                let _ = index.store(PodId(1), &blocks, HashSeed::new("m", None, 0));
            }
            Change::Removed { block_hashes, medium } => {
                index.remove(PodId(1), block_hashes, *medium);
            }
            Change::Cleared => index.clear_pod(PodId(1)),
        }
    }
});
