//! The index and policy alone, as the router drives them: hash a prompt's blocks, look them up,
//! pick, record. Criterion times one decision on one thread; then a multi-threaded run reports
//! decisions per second at 1, 2 and 4 threads sharing one index behind the router's `RwLock`
//! (lookups under the read lock, records under the write lock).
//!
//! `cargo bench -p prefix-index --bench index` (env `SECONDS` per thread count, default 3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::Criterion;
use prefix_index::policy::{Candidate, Pick, Policy, PrefixAware, PrefixParams, RequestFacts};
use prefix_index::{block_hashes, HashSeed, PodId, PrefixIndex};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

const BLOCK: usize = 16;
const PODS: u32 = 64;
const TOKENS: usize = 8192;
/// Distinct shared prefixes (system prompts); each prompt is one of them plus its own tail.
const GROUPS: u32 = 256;

fn params() -> PrefixParams {
    PrefixParams { prefix_weight: 1.0, load_weight: 1.0, balance_abs: 8, balance_rel: 1.5 }
}

/// Prompt `n`: a shared 6k-token head chosen by `n % GROUPS`, then a 2k-token tail of its own.
fn prompt(n: u64) -> Vec<u32> {
    let group = (n % u64::from(GROUPS)) as u32;
    let head = (0..6144u32).map(|i| group.wrapping_mul(7919).wrapping_add(i) % 150_000);
    let tail = (0..(TOKENS as u32 - 6144)).map(|i| (n as u32).wrapping_mul(31).wrapping_add(i) % 150_000);
    head.chain(tail).collect()
}

fn warm_index() -> PrefixIndex {
    let mut index = PrefixIndex::new(65_536);
    let seed = HashSeed::new("m", None, 0);
    for n in 0..u64::from(GROUPS) * 4 {
        let hashes = block_hashes(&prompt(n), BLOCK, seed);
        index.record(PodId((n % u64::from(PODS)) as u32), &hashes);
    }
    index
}

/// One decision: look up, pick, record. Returns the chosen pod.
fn decide(index: &RwLock<PrefixIndex>, policy: &PrefixAware, hashes: &[u64]) -> PodId {
    let facts: Vec<Candidate> = {
        let index = index.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let matches = index.lookup(hashes);
        (0..PODS)
            .map(|p| Candidate {
                matched_blocks: matches.get(PodId(p)),
                inflight: 0,
                index_blocks: index.pod_blocks(PodId(p)),
                affinity: u64::from(p),
            })
            .collect()
    };
    let Pick::Chosen { order, .. } =
        policy.pick(&facts, &RequestFacts { prompt_blocks: hashes.len(), placement: hashes.first().copied() })
    else {
        panic!("no pod picked");
    };
    let pod = PodId(order[0] as u32);
    index.write().unwrap_or_else(std::sync::PoisonError::into_inner).record(pod, hashes);
    pod
}

fn single_thread(c: &mut Criterion) {
    let index = RwLock::new(warm_index());
    let policy = PrefixAware(params());
    let seed = HashSeed::new("m", None, 0);
    let tokens = prompt(1_000_003);
    let hashes = block_hashes(&tokens, BLOCK, seed);
    let mut g = c.benchmark_group("index_8k_tokens_64_pods");
    g.bench_function("hash", |b| b.iter(|| block_hashes(black_box(&tokens), BLOCK, seed)));
    g.bench_function("lookup", |b| {
        let index = index.read().unwrap();
        b.iter(|| index.lookup(black_box(&hashes)));
    });
    g.bench_function("lookup_pick_record", |b| b.iter(|| decide(&index, &policy, black_box(&hashes))));
    g.finish();
}

/// Decisions per second with `threads` threads sharing one index, each hashing its own prompts.
fn throughput(threads: usize, run: Duration) -> f64 {
    let index = Arc::new(RwLock::new(warm_index()));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (index, stop, done) = (Arc::clone(&index), Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || {
                let policy = PrefixAware(params());
                let seed = HashSeed::new("m", None, 0);
                let mut n = t as u64 * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    let hashes = block_hashes(&prompt(n), BLOCK, seed);
                    black_box(decide(&index, &policy, &hashes));
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    single_thread(&mut c);
    c.final_summary();

    let secs: u64 = std::env::var("SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    println!("\nshared index, 8k-token prompts (prompt generation + hash + lookup + pick + record), {PODS} pods:");
    println!("| threads | decisions/s | × 1 thread |");
    println!("|---:|---:|---:|");
    let mut base = 0.0;
    for threads in [1, 2, 4] {
        let rate = throughput(threads, Duration::from_secs(secs));
        if threads == 1 {
            base = rate;
        }
        println!("| {threads} | {rate:.0} | {:.2} |", rate / base);
    }
}
