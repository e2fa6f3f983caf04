//! KV-cache block hashing, the prefix index and the routing policy — a library with no network or
//! runtime types (no tokio, tonic, kube, reqwest, HTTP). It takes token ids and pod ids and answers
//! "how many leading blocks of this prompt does each pod hold", and a policy turns those facts and
//! each pod's load into an order of preference. See README.md beside this crate for the invariants.

pub mod events;
mod hash;
mod index;
pub mod policy;

pub use events::{Blocks, Change, EventIndex, Medium};
pub use hash::{block_hashes, extend_hashes, HashSeed};
pub use index::{Matches, PodId, PrefixIndex};

/// The maps keyed by block hashes and pods: a fast hasher (thousands of lookups a decision),
/// seeded per map so crafted prompts cannot aim at its buckets.
type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
