//! Request → token ids. Local today (a configured HF tokenizer with its chat template, or a byte
//! approximation); the remote vLLM `/tokenize` pool plugs in behind the same trait.

mod local;

pub use local::LocalTokenizer;

use crate::discovery::Model;
use crate::openai::InferenceRequest;
use futures::future::BoxFuture;
use std::sync::Arc;

/// Where token ids come from. Ids from different spaces never share a prefix hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSpace {
    /// The engine's own tokens: from vLLM `/tokenize`, or token ids the client sent.
    Engine,
    /// A local HF tokenizer, by fingerprint of its files.
    Local(u64),
    /// Fixed bytes per token: no tokenizer at hand.
    Approx,
}

impl TokenSpace {
    pub fn id(self) -> u64 {
        match self {
            TokenSpace::Engine => 0x0e0e,
            TokenSpace::Local(fp) => fp | 1,
            TokenSpace::Approx => 0xa99a,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            TokenSpace::Engine => "engine",
            TokenSpace::Local(_) => "local",
            TokenSpace::Approx => "approx",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub space: TokenSpace,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("no tokenizer for this request")]
    Unavailable,
    #[error("{0}")]
    Failed(String),
}

/// A way to tokenize a request for routing. Implementations never see the network types of
/// the ext_proc layer.
pub trait Tokenize: Send + Sync {
    fn tokenize<'a>(
        &'a self,
        model: &'a Arc<Model>,
        req: &'a InferenceRequest,
    ) -> BoxFuture<'a, Result<Tokens, TokenizeError>>;
}
