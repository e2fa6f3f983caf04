//! Block hashing and the prefix index. A library with no network or runtime types: it takes
//! token ids and pod ids and answers "how many leading blocks of this prompt does each pod hold".
//! See README.md beside this file for the invariants.

mod hash;
mod index;

pub use hash::{block_hashes, HashSeed};
pub use index::{Matches, PodId, PrefixIndex};
