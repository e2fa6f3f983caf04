//! Scoring policies. Each sees the model's admissible pods with their cached-prefix and load
//! facts and returns an order of preference (primary first) with the reason, or a typed refusal.

use rand::Rng;
use std::sync::atomic::{AtomicUsize, Ordering};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// One admissible pod, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Leading prompt blocks the index says this pod holds.
    pub matched_blocks: usize,
    /// Requests routed to it and not yet finished.
    pub inflight: u64,
    /// Blocks the index holds for it in all: how much of the cache space it already uses.
    pub index_blocks: usize,
    /// A hash of the pod's identity that every router replica computes alike (its address or
    /// UID, not a replica-local id): what rendezvous placement ranks pods by.
    pub affinity: u64,
}

/// What the request brings, borrowed so new facts can arrive without changing signatures.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts {
    /// Full blocks in the prompt (0 when routed on load alone).
    pub prompt_blocks: usize,
    /// The hash of the prompt's first block: a prompt no pod holds is placed by rendezvous hashing
    /// of it, so replicas that share no state place a new conversation on the same pod.
    pub placement: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to the pod holding the longest cached prefix.
    PrefixHit,
    /// No pod held any of the prompt: placed on load.
    Miss,
    /// The pod with the longest prefix was passed over for load.
    LoadOverride,
    /// No prompt to match (other paths, bodiless requests).
    LoadOnly,
    /// A baseline policy (random, round-robin, least-load).
    Baseline,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::PrefixHit => "prefix_hit",
            Outcome::Miss => "miss",
            Outcome::LoadOverride => "load_override",
            Outcome::LoadOnly => "load_only",
            Outcome::Baseline => "baseline",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pick {
    /// Indexes into the candidates, best first.
    Chosen {
        order: Vec<usize>,
        outcome: Outcome,
    },
    NoCandidates,
}

pub trait Policy: Send + Sync {
    fn pick(&self, candidates: &[Candidate], facts: &RequestFacts) -> Pick;

    /// Why a candidate ranked where it did, in the policy's own terms (for route receipts); `None`
    /// for policies that do not score.
    fn terms(&self, _candidates: &[Candidate], _facts: &RequestFacts, _i: usize) -> Option<Terms> {
        None
    }
}

/// One candidate's score under [`PrefixAware`]: lower cost wins among pods the guard admits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Terms {
    /// prefix_weight × prompt blocks the pod does not hold.
    pub prefix_cost: f64,
    /// load_weight × requests in flight on the pod.
    pub load_cost: f64,
    /// Passed over by the balance guard (far busier than the least loaded pod).
    pub guarded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefixParams {
    /// Cost of one uncached prompt block (it must be prefilled).
    pub prefix_weight: f64,
    /// Cost of one request in flight on the pod, in blocks.
    pub load_weight: f64,
    /// A pod is passed over when its in-flight count exceeds the least loaded pod's by more than
    /// this many requests…
    pub balance_abs: u64,
    /// …and is more than this many times the least loaded pod's.
    pub balance_rel: f64,
}

/// A new prompt's pod may hold at most this many times the mean in-flight count…
pub const BOUNDED_LOAD: f64 = 1.5;
/// …or this many requests, whichever is more (at low load the mean says little, and replicas,
/// each seeing only its own requests, would otherwise disagree over one or two in flight).
pub const BOUNDED_LOAD_FLOOR: u64 = 3;

/// Cost = prefix_weight × uncached blocks + load_weight × in-flight requests, among pods the
/// balance guard admits; ties go to the pod with the smaller index footprint, then at random.
#[derive(Debug)]
pub struct PrefixAware(pub PrefixParams);

impl PrefixAware {
    fn score(&self, x: &Candidate, facts: &RequestFacts, min_load: u64) -> Terms {
        let p = &self.0;
        let uncached = facts.prompt_blocks.saturating_sub(x.matched_blocks);
        Terms {
            prefix_cost: p.prefix_weight * uncached as f64,
            load_cost: p.load_weight * x.inflight as f64,
            guarded: x.inflight > min_load + p.balance_abs && (x.inflight as f64) > p.balance_rel * min_load as f64,
        }
    }
}

impl Policy for PrefixAware {
    fn terms(&self, c: &[Candidate], facts: &RequestFacts, i: usize) -> Option<Terms> {
        let min_load = c.iter().map(|x| x.inflight).min()?;
        Some(self.score(c.get(i)?, facts, min_load))
    }

    fn pick(&self, c: &[Candidate], facts: &RequestFacts) -> Pick {
        let Some(min_load) = c.iter().map(|x| x.inflight).min() else {
            return Pick::NoCandidates;
        };
        let guarded = |x: &Candidate| self.score(x, facts, min_load).guarded;
        let cost = |x: &Candidate| {
            let s = self.score(x, facts, min_load);
            s.prefix_cost + s.load_cost
        };
        let best_match = c.iter().map(|x| x.matched_blocks).max().unwrap_or(0);
        let order = match facts.placement {
            // Nothing cached anywhere: rendezvous hashing with bounded loads. Pods are ranked by a
            // hash of the first block and their identity, so every replica ranks them alike; the
            // first pod below 1.5 × the mean in-flight count (this one included) takes it. Replicas
            // agree unless a pod is that much busier than the rest; no pod gets a burst of new
            // conversations that happen to hash alike.
            Some(key) if best_match == 0 && facts.prompt_blocks > 0 => {
                let total: u64 = c.iter().map(|x| x.inflight).sum();
                let cap = ((BOUNDED_LOAD * (total + 1) as f64 / c.len() as f64).ceil() as u64).max(BOUNDED_LOAD_FLOOR);
                let mut keyed: Vec<(bool, bool, std::cmp::Reverse<u64>, usize)> = c
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        let rank = std::cmp::Reverse(xxh3_64_with_seed(&key.to_le_bytes(), x.affinity));
                        let full = x.inflight + 1 > cap;
                        (guarded(x), full, rank, i)
                    })
                    .collect();
                keyed.sort_unstable();
                keyed.iter().map(|k| k.3).collect()
            }
            _ => {
                // Equal pods go in a random order: one draw from the generator per decision, mixed
                // with each pod's place (SplitMix64), rather than one draw per pod.
                let salt: u64 = rand::rng().random();
                let mut keyed: Vec<(bool, f64, usize, u32, usize)> =
                    c.iter().enumerate().map(|(i, x)| (guarded(x), cost(x), x.index_blocks, mix(salt, i), i)).collect();
                keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
                keyed.iter().map(|k| k.4).collect::<Vec<usize>>()
            }
        };
        let outcome = if facts.prompt_blocks == 0 {
            Outcome::LoadOnly
        } else if best_match == 0 {
            Outcome::Miss
        } else if c[order[0]].matched_blocks == best_match {
            Outcome::PrefixHit
        } else {
            Outcome::LoadOverride
        };
        Pick::Chosen { order, outcome }
    }
}

/// A well-spread 32-bit value for `i` under `salt` (SplitMix64's finalizer).
fn mix(salt: u64, i: usize) -> u32 {
    let mut z = salt.wrapping_add((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 32) as u32
}

#[derive(Debug, Default)]
pub struct Random;

impl Policy for Random {
    fn pick(&self, c: &[Candidate], _: &RequestFacts) -> Pick {
        if c.is_empty() {
            return Pick::NoCandidates;
        }
        let mut order: Vec<usize> = (0..c.len()).collect();
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rand::rng());
        Pick::Chosen { order, outcome: Outcome::Baseline }
    }
}

#[derive(Debug, Default)]
pub struct RoundRobin(AtomicUsize);

impl Policy for RoundRobin {
    fn pick(&self, c: &[Candidate], _: &RequestFacts) -> Pick {
        if c.is_empty() {
            return Pick::NoCandidates;
        }
        let start = self.0.fetch_add(1, Ordering::Relaxed) % c.len();
        let order = (0..c.len()).map(|i| (start + i) % c.len()).collect();
        Pick::Chosen { order, outcome: Outcome::Baseline }
    }
}

#[derive(Debug, Default)]
pub struct LeastLoad;

impl Policy for LeastLoad {
    fn pick(&self, c: &[Candidate], _: &RequestFacts) -> Pick {
        if c.is_empty() {
            return Pick::NoCandidates;
        }
        let mut rng = rand::rng();
        let mut keyed: Vec<(u64, u32, usize)> =
            c.iter().enumerate().map(|(i, x)| (x.inflight, rng.random(), i)).collect();
        keyed.sort_unstable();
        Pick::Chosen { order: keyed.into_iter().map(|k| k.2).collect(), outcome: Outcome::Baseline }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(matched_blocks: usize, inflight: u64) -> Candidate {
        Candidate { matched_blocks, inflight, index_blocks: 0, affinity: 0 }
    }

    const PARAMS: PrefixParams =
        PrefixParams { prefix_weight: 1.0, load_weight: 8.0, balance_abs: 8, balance_rel: 1.5 };

    fn first(p: &dyn Policy, c: &[Candidate], blocks: usize) -> (usize, Outcome) {
        match p.pick(c, &RequestFacts { prompt_blocks: blocks, placement: None }) {
            Pick::Chosen { order, outcome } => (order[0], outcome),
            Pick::NoCandidates => panic!("no pick"),
        }
    }

    #[test]
    fn prefers_the_cached_prefix_until_load_outweighs_it() {
        let p = PrefixAware(PARAMS);
        assert_eq!(first(&p, &[cand(0, 0), cand(100, 2), cand(10, 0)], 125), (1, Outcome::PrefixHit));
        // 100 blocks saved < 8 × 13 extra in flight: the load wins.
        assert_eq!(first(&p, &[cand(0, 0), cand(100, 13)], 125), (0, Outcome::LoadOverride));
        assert_eq!(first(&p, &[cand(0, 3), cand(0, 1)], 125), (1, Outcome::Miss));
        assert_eq!(first(&p, &[cand(0, 3), cand(0, 1)], 0), (1, Outcome::LoadOnly));
    }

    #[test]
    fn balance_guard_passes_over_an_overloaded_pod_whatever_it_holds() {
        let p = PrefixAware(PrefixParams { load_weight: 0.0, ..PARAMS });
        assert_eq!(first(&p, &[cand(0, 0), cand(1000, 9)], 1000), (0, Outcome::LoadOverride));
        assert_eq!(first(&p, &[cand(0, 0), cand(1000, 8)], 1000), (1, Outcome::PrefixHit));
        // 29 is 9 more than 20 (over the absolute threshold) but within 1.5× of it: not guarded.
        assert_eq!(first(&p, &[cand(0, 20), cand(1000, 29)], 1000), (1, Outcome::PrefixHit));
        assert_eq!(first(&p, &[cand(0, 20), cand(1000, 31)], 1000), (0, Outcome::LoadOverride));
    }

    #[test]
    fn misses_spread_over_pods_with_smaller_index_footprint() {
        let p = PrefixAware(PARAMS);
        let c = [
            Candidate { matched_blocks: 0, inflight: 0, index_blocks: 50, affinity: 0 },
            Candidate { matched_blocks: 0, inflight: 0, index_blocks: 10, affinity: 0 },
        ];
        assert_eq!(first(&p, &c, 10).0, 1);
    }

    #[test]
    fn equal_pods_take_turns_at_random() {
        let p = PrefixAware(PARAMS);
        let c = [cand(5, 1), cand(5, 1), cand(5, 1), cand(5, 1)];
        let mut firsts = [0usize; 4];
        for _ in 0..2000 {
            firsts[first(&p, &c, 10).0] += 1;
        }
        // A fair draw gives 500 each (σ ≈ 19); a fixed order gives 2000 to one pod.
        assert!(firsts.iter().all(|&n| n > 350), "{firsts:?}");
    }

    #[test]
    fn baselines_cover_every_pod() {
        let c = [cand(0, 5), cand(0, 1), cand(0, 3)];
        let rr = RoundRobin::default();
        let seen: std::collections::HashSet<usize> = (0..3).map(|_| first(&rr, &c, 1).0).collect();
        assert_eq!(seen.len(), 3);
        assert_eq!(first(&LeastLoad, &c, 1).0, 1);
        assert!(matches!(Random.pick(&[], &RequestFacts { prompt_blocks: 1, placement: None }), Pick::NoCandidates));
    }

    #[test]
    fn a_prompt_no_pod_holds_is_placed_alike_whatever_the_local_load() {
        let p = PrefixAware(PARAMS);
        let pods = |loads: [u64; 4]| -> Vec<Candidate> {
            (0..4)
                .map(|i| Candidate {
                    matched_blocks: 0,
                    inflight: loads[i],
                    index_blocks: 0,
                    affinity: 1000 + i as u64,
                })
                .collect()
        };
        let pick =
            |c: &[Candidate], key: u64| match p.pick(c, &RequestFacts { prompt_blocks: 10, placement: Some(key) }) {
                Pick::Chosen { order, outcome } => (order[0], outcome),
                Pick::NoCandidates => panic!("no pick"),
            };
        let mut spread = std::collections::HashSet::new();
        for key in 0..64u64 {
            // Two replicas with different in-flight counts (each pod under the bound) agree.
            let (a, outcome) = pick(&pods([0, 0, 0, 0]), key);
            let (b, _) = pick(&pods([3, 2, 4, 3]), key);
            assert_eq!((a, outcome), (b, Outcome::Miss), "key {key}");
            spread.insert(a);
        }
        assert_eq!(spread.len(), 4, "different prompts spread over every pod");
        // A pod far busier than the mean is passed over, as is one the guard excludes.
        let key = (0..64u64).find(|k| pick(&pods([0; 4]), *k).0 == 2).expect("some key lands on pod 2");
        assert_ne!(pick(&pods([0, 0, 20, 0]), key).0, 2);
        assert_ne!(pick(&pods([2, 2, 6, 2]), key).0, 2, "6 + 1 > ⌈1.5 × (12 + 1) / 4⌉ = 5");
        assert_eq!(pick(&pods([3, 2, 4, 3]), key).0, 2, "4 + 1 ≤ ⌈1.5 × (12 + 1) / 4⌉");
        assert_eq!(pick(&pods([0, 0, 2, 0]), key).0, 2, "at low load up to 3 in flight are allowed");
    }
}
