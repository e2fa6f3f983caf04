//! The simulated engine: at most `max_num_seqs` requests run, the rest wait in arrival order;
//! prefill is one shared compute resource (uncached tokens × `prefill_us_per_token`, one request
//! at a time, as a GPU's prefill budget is shared), decode costs `decode_ms_per_token` per token.

use super::cache::{Allocation, BlockPool, Seq};
use super::kv_events::Publisher;
use super::metrics::SimMetrics;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub prefill_us_per_token: f64,
    pub decode_ms_per_token: f64,
    pub max_num_seqs: usize,
}

pub(crate) struct Engine {
    state: Mutex<State>,
    wake: Notify,
    prefill: tokio::sync::Mutex<()>,
    timing: Timing,
    metrics: Arc<SimMetrics>,
    /// Where each step's KV events go (`None`: events off).
    publisher: Option<Publisher>,
}

struct State {
    pool: BlockPool,
    waiting: VecDeque<u64>,
    running: usize,
    next_id: u64,
    /// Block hashes of requests that are queued or prefilling here: what the pool will hold once
    /// the requests ahead finish their prefill (a count per hash, as requests may share blocks).
    coming: HashMap<u64, u32>,
}

/// A request that holds a running slot and its KV blocks; both are returned on drop, so a client
/// that disconnects mid-stream frees them too.
pub(crate) struct Running {
    engine: Arc<Engine>,
    alloc: Option<Allocation>,
    pub cached_tokens: usize,
    pub prompt_tokens: usize,
}

impl Engine {
    pub(crate) fn new(pool: BlockPool, timing: Timing, metrics: Arc<SimMetrics>, publisher: Option<Publisher>) -> Self {
        let pool = if publisher.is_some() { pool.with_events() } else { pool };
        let state = State { pool, waiting: VecDeque::new(), running: 0, next_id: 0, coming: HashMap::new() };
        Self {
            state: Mutex::new(state),
            wake: Notify::new(),
            prefill: tokio::sync::Mutex::new(()),
            timing,
            metrics,
            publisher,
        }
    }

    /// `POST /reset_prefix_cache`: false while requests hold blocks.
    pub(crate) fn reset_prefix_cache(&self) -> bool {
        let mut st = self.lock();
        let done = st.pool.reset();
        self.publish(&mut st);
        done
    }

    /// Publishes what the pool recorded since the last step (nothing when nothing changed). Sent
    /// under the state lock so batches leave in the order the pool changed.
    fn publish(&self, st: &mut State) {
        if let Some(p) = &self.publisher {
            p.publish(st.pool.take_events());
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the pool half-updated in a way later
        // requests could not use, so a poisoned lock is still good.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn capacity_tokens(&self, block_size: usize) -> usize {
        self.lock().pool.capacity() * block_size
    }

    pub(crate) fn cached_blocks(&self, hashes: &[u64]) -> usize {
        self.lock().pool.cached_blocks(hashes)
    }

    /// Leading blocks of `hashes` the pool holds now or that a request queued or prefilling here
    /// is computing: what a request sent now would find once the requests ahead of it are done.
    pub(crate) fn cached_or_coming_blocks(&self, hashes: &[u64]) -> usize {
        let st = self.lock();
        hashes.iter().take_while(|h| st.pool.holds(**h) || st.coming.contains_key(h)).count()
    }

    pub(crate) fn usage(&self) -> f64 {
        self.lock().pool.usage()
    }

    /// Waits for a slot and room in the pool (first come, first served), then runs prefill.
    pub(crate) async fn start(self: &Arc<Self>, seq: &Seq, output_tokens: usize) -> Running {
        let (hashes, prompt_tokens) = (seq.hashes.as_slice(), seq.tokens.len());
        let arrived = Instant::now();
        let id = {
            let mut st = self.lock();
            st.next_id += 1;
            let id = st.next_id;
            st.waiting.push_back(id);
            for h in hashes {
                *st.coming.entry(*h).or_default() += 1;
            }
            self.metrics.waiting.inc();
            id
        };
        let coming = Coming { engine: self.as_ref(), hashes };
        let mut queued = WaitingGuard { engine: self.as_ref(), id: Some(id) };
        let alloc = loop {
            let notified = self.wake.notified();
            {
                let mut st = self.lock();
                if st.waiting.front() == Some(&id) && st.running < self.timing.max_num_seqs {
                    if let Some(alloc) = st.pool.admit(hashes, prompt_tokens, output_tokens) {
                        st.waiting.pop_front();
                        st.running += 1;
                        queued.id = None;
                        self.metrics.waiting.dec();
                        self.metrics.running.inc();
                        self.metrics.record_admission(prompt_tokens, alloc.cached_tokens, st.pool.usage());
                        break alloc;
                    }
                }
            }
            notified.await;
        };
        // The next in line may fit too.
        self.wake.notify_waiters();
        let cached_tokens = alloc.cached_tokens;
        let mut running = Running { engine: Arc::clone(self), alloc: Some(alloc), cached_tokens, prompt_tokens };
        let uncached = prompt_tokens.saturating_sub(cached_tokens);
        let prefill = Duration::from_secs_f64(uncached as f64 * self.timing.prefill_us_per_token / 1e6);
        if !prefill.is_zero() {
            let _compute = self.prefill.lock().await;
            pause(prefill).await;
        }
        if let Some(alloc) = running.alloc.as_mut() {
            let mut st = self.lock();
            st.pool.commit_prefill(alloc, seq);
            self.publish(&mut st);
        }
        drop(coming);
        self.metrics.ttft.observe(arrived.elapsed().as_secs_f64());
        running
    }

    pub(crate) fn decode_delay(&self) -> Duration {
        Duration::from_secs_f64(self.timing.decode_ms_per_token / 1e3)
    }
}

/// Sleeps, except for zero: tokio's timer would still wait for its next millisecond tick.
pub(crate) async fn pause(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(alloc) = self.alloc.take() {
            let mut st = self.engine.lock();
            st.pool.release(alloc);
            st.running -= 1;
            self.engine.metrics.running.dec();
            self.engine.metrics.kv_usage.set(st.pool.usage());
        }
        self.engine.wake.notify_waiters();
    }
}

/// A request's blocks counted as coming until its prefill is committed or it goes away.
struct Coming<'a> {
    engine: &'a Engine,
    hashes: &'a [u64],
}

impl Drop for Coming<'_> {
    fn drop(&mut self) {
        let mut st = self.engine.lock();
        for h in self.hashes {
            if let std::collections::hash_map::Entry::Occupied(mut e) = st.coming.entry(*h) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }
}

/// Removes a request from the queue if its client went away before it was admitted.
struct WaitingGuard<'a> {
    engine: &'a Engine,
    id: Option<u64>,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let mut st = self.engine.lock();
            st.waiting.retain(|w| *w != id);
            self.engine.metrics.waiting.dec();
            drop(st);
            self.engine.wake.notify_waiters();
        }
    }
}
