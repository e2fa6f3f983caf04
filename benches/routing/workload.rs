//! Workloads: shared prefix (inference-perf's `shared_prefix`), multi-turn chat, and trace replay
//! (Mooncake-style JSONL: each hash id stands for a 512-token block).

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// One request: where it goes, what it says, and (for chats) which conversation turn it is.
#[derive(Clone)]
pub(crate) struct Job {
    pub at_ms: f64,
    pub path: &'static str,
    pub body: Value,
}

/// Deterministic filler text: `n` sentences, distinct per `seed` from the first word on.
pub(crate) fn text(seed: &str, sentences: usize) -> String {
    (0..sentences).map(|i| format!("{seed} clause {i} holds reusable context. ")).collect()
}

/// Poisson arrival times (ms) for `n` requests at `rate` per second.
pub(crate) fn arrivals(n: usize, rate: f64, seed: u64) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut t = 0.0;
    (0..n)
        .map(|_| {
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            t += -u.ln() / rate * 1000.0;
            t
        })
        .collect()
}

pub(crate) struct SharedPrefix {
    pub groups: usize,
    pub prompts_per_group: usize,
    /// In sentences of ~7 tokens.
    pub system_sentences: usize,
    pub question_sentences: usize,
    pub output_len: usize,
}

impl SharedPrefix {
    pub(crate) fn jobs(&self, rate: f64) -> Vec<Job> {
        let n = self.groups * self.prompts_per_group;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut order: Vec<(usize, usize)> =
            (0..self.groups).flat_map(|g| (0..self.prompts_per_group).map(move |p| (g, p))).collect();
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
        arrivals(n, rate, 11)
            .into_iter()
            .zip(order)
            .map(|(at_ms, (g, p))| Job {
                at_ms,
                path: "/v1/chat/completions",
                body: json!({"model": "m", "max_tokens": self.output_len, "messages": [
                    {"role": "system", "content": text(&format!("System prompt of group {g}"), self.system_sentences)},
                    {"role": "user", "content": text(&format!("Question {p} of group {g}"), self.question_sentences)}]}),
            })
            .collect()
    }
}

#[derive(Clone)]
pub(crate) struct MultiTurn {
    pub conversations: usize,
    pub turns: usize,
    pub turn_sentences: usize,
    pub output_len: usize,
    /// Mean pause between a reply and the next turn.
    pub think_ms: f64,
}

/// A conversation: its start time; its turns are generated as replies arrive.
pub(crate) fn user_turn(conv: usize, turn: usize, sentences: usize) -> Value {
    json!({"role": "user", "content": text(&format!("Conversation {conv} turn {turn}"), sentences)})
}

/// A trace record: `{"timestamp": ms, "input_length": n, "output_length": n, "hash_ids": [..]}`.
#[derive(serde::Deserialize)]
pub(crate) struct TraceRecord {
    pub timestamp: f64,
    pub input_length: usize,
    pub output_length: usize,
    pub hash_ids: Vec<u64>,
}

pub(crate) const TRACE_BLOCK: usize = 512;

/// Token ids for a trace record: equal hash ids give equal 512-token blocks.
pub(crate) fn trace_tokens(r: &TraceRecord) -> Vec<u32> {
    let mut ids = Vec::with_capacity(r.input_length);
    for h in &r.hash_ids {
        let mut rng = rand::rngs::StdRng::seed_from_u64(*h ^ 0x9e37_79b9_7f4a_7c15);
        for _ in 0..TRACE_BLOCK {
            if ids.len() == r.input_length {
                break;
            }
            ids.push(rng.random_range(1000..100_000));
        }
    }
    ids
}

pub(crate) fn trace_jobs(text: &str, time_scale: f64, max_output: usize) -> Result<Vec<Job>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let r: TraceRecord = serde_json::from_str(l).map_err(|e| format!("trace line {}: {e}", i + 1))?;
            Ok(Job {
                at_ms: r.timestamp * time_scale,
                path: "/v1/completions",
                body: json!({"model": "m", "prompt": trace_tokens(&r), "max_tokens": r.output_length.clamp(1, max_output)}),
            })
        })
        .collect()
}

/// A synthetic Mooncake-style trace: sessions whose requests extend a shared root of blocks.
pub(crate) fn synthetic_trace(requests: usize, rate: f64) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut next_id = 1u64;
    let roots: Vec<Vec<u64>> = (0..40)
        .map(|_| {
            let n = rng.random_range(2..5);
            (0..n)
                .map(|_| {
                    next_id += 1;
                    next_id
                })
                .collect()
        })
        .collect();
    arrivals(requests, rate, 5)
        .into_iter()
        .map(|t| {
            let root = &roots[rng.random_range(0..roots.len())];
            let mut ids = root.clone();
            for _ in 0..rng.random_range(0..2) {
                next_id += 1;
                ids.push(next_id);
            }
            let input = ids.len() * TRACE_BLOCK - rng.random_range(0..TRACE_BLOCK / 2);
            json!({"timestamp": t.round(), "input_length": input, "output_length": rng.random_range(8..24), "hash_ids": ids})
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
