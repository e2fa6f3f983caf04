//! The index's invariants (README.md beside this crate) checked against a naive model on random
//! operation sequences: lookups equal each pod's leading run in the model, each pod holds at most
//! its capacity and forgets least recently routed blocks first, removed pods hold nothing, and the
//! index's size is the number of distinct blocks held.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use prefix_index::{PodId, PrefixIndex};
use proptest::prelude::*;
use std::collections::HashSet;

#[derive(Debug, Clone)]
enum Op {
    Record(u32, Vec<u64>),
    Remove(u32),
    Forget(u32, Vec<u64>),
    Lookup(Vec<u64>),
}

fn op() -> impl Strategy<Value = Op> {
    let hashes = prop::collection::vec(0u64..24, 0..10);
    prop_oneof![
        4 => (0u32..4, hashes.clone()).prop_map(|(p, h)| Op::Record(p, h)),
        1 => (0u32..4).prop_map(Op::Remove),
        1 => (0u32..4, prop::collection::vec(0u64..24, 0..4)).prop_map(|(p, h)| Op::Forget(p, h)),
        3 => hashes.prop_map(Op::Lookup),
    ]
}

/// Per pod, blocks from least to most recently routed.
#[derive(Default)]
struct Model {
    pods: Vec<(u32, Vec<u64>)>,
    cap: usize,
}

impl Model {
    fn pod(&mut self, p: u32) -> &mut Vec<u64> {
        if let Some(i) = self.pods.iter().position(|(q, _)| *q == p) {
            return &mut self.pods[i].1;
        }
        self.pods.push((p, Vec::new()));
        &mut self.pods.last_mut().expect("just pushed").1
    }

    fn record(&mut self, p: u32, hashes: &[u64]) {
        let cap = self.cap;
        let lru = self.pod(p);
        // Head-first: the tail ends least recent.
        for h in hashes.iter().rev() {
            lru.retain(|x| x != h);
            lru.push(*h);
        }
        while lru.len() > cap {
            lru.remove(0);
        }
    }

    fn run(&self, p: u32, hashes: &[u64]) -> usize {
        let held = self.pods.iter().find(|(q, _)| *q == p).map_or(&[][..], |(_, v)| v.as_slice());
        hashes.iter().take_while(|h| held.contains(h)).count()
    }
}

proptest! {
    #[test]
    fn the_index_behaves_like_the_naive_model(cap in 1usize..12, ops in prop::collection::vec(op(), 1..80)) {
        let mut index = PrefixIndex::new(cap);
        let mut model = Model { cap, ..Model::default() };
        for op in ops {
            match op {
                Op::Record(p, h) => {
                    index.record(PodId(p), &h);
                    model.record(p, &h);
                }
                Op::Remove(p) => {
                    index.remove_pod(PodId(p));
                    model.pods.retain(|(q, _)| *q != p);
                }
                Op::Forget(p, h) => {
                    index.forget(PodId(p), &h);
                    if let Some((_, held)) = model.pods.iter_mut().find(|(q, _)| *q == p) {
                        held.retain(|x| !h.contains(x));
                    }
                }
                Op::Lookup(h) => {
                    let m = index.lookup(&h);
                    for p in 0..4 {
                        prop_assert_eq!(m.get(PodId(p)), model.run(p, &h), "pod {} on {:?}", p, h);
                    }
                }
            }
            for p in 0..4u32 {
                let held = model.pods.iter().find(|(q, _)| *q == p).map_or(0, |(_, v)| v.len());
                prop_assert_eq!(index.pod_blocks(PodId(p)), held);
                prop_assert!(held <= cap);
            }
            let distinct: HashSet<u64> = model.pods.iter().flat_map(|(_, v)| v.iter().copied()).collect();
            prop_assert_eq!(index.len(), distinct.len());
        }
    }
}
