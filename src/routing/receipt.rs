//! Why a request went where it went: the route receipt. Built from the facts the policy saw —
//! counts, pod addresses, trust states and the policy's score terms, never prompt text — kept in a
//! bounded ring for `/debug/decisions`, and returned to a client that asks for it (when the
//! operator allows) as a response header.

use prefix_index::policy::Terms;
use serde::Serialize;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Candidates listed on a receipt: the preferred ones, in order (the chosen pod is always among
/// them). Bounds the header's size to well under 1 KiB.
pub const LISTED: usize = 4;

#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub model: String,
    /// `prefix_hit`, `miss`, `load_override`, `load_only`, `baseline`.
    pub outcome: &'static str,
    /// Where the tokens came from: `engine`, `local`, `approx`, or `none`.
    pub tokens: &'static str,
    /// Full prompt blocks that could match a cached prefix (with `tail`, those of the leading
    /// tokens the decision had).
    pub prompt_blocks: usize,
    /// The prompt's new text was tokenized after the decision: the decision had its leading
    /// tokens (the pieces the tokenizer already knew), which decide the match.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tail: bool,
    /// `rendezvous` when no pod held any of the prompt and it was placed by its first block (as
    /// every replica places it), else `cost`.
    pub placement: &'static str,
    pub chosen: SocketAddr,
    pub candidates: Vec<CandidateReceipt>,
    pub decision_us: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CandidateReceipt {
    pub pod: SocketAddr,
    pub matched_blocks: usize,
    pub inflight: u64,
    /// How far the index trusts this pod's cache view: `exact` (KV events), `degraded`, `history`.
    pub trust: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_cost: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_cost: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guarded: Option<bool>,
}

impl CandidateReceipt {
    pub(super) fn new(pod: SocketAddr, matched: usize, inflight: u64, trust: &'static str, t: Option<Terms>) -> Self {
        Self {
            pod,
            matched_blocks: matched,
            inflight,
            trust,
            prefix_cost: t.map(|t| t.prefix_cost),
            load_cost: t.map(|t| t.load_cost),
            guarded: t.map(|t| t.guarded),
        }
    }
}

/// The last `cap` receipts, newest last.
pub struct Ring {
    cap: usize,
    buf: Mutex<VecDeque<Arc<Receipt>>>,
}

impl Ring {
    pub fn new(cap: usize) -> Self {
        Self { cap, buf: Mutex::new(VecDeque::with_capacity(cap.min(4096))) }
    }

    pub fn enabled(&self) -> bool {
        self.cap > 0
    }

    pub fn push(&self, r: Arc<Receipt>) {
        if self.cap == 0 {
            return;
        }
        let mut buf = self.buf.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buf.len() == self.cap {
            buf.pop_front();
        }
        buf.push_back(r);
    }

    /// Up to `n` receipts, newest first.
    pub fn recent(&self, n: usize) -> Vec<Arc<Receipt>> {
        let buf = self.buf.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        buf.iter().rev().take(n).cloned().collect()
    }
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
