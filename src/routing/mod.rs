//! The decision path: model → ready pods → tokens → block hashes → index lookup → policy pick →
//! record + in-flight guard. Nothing here knows about ext_proc or HTTP.

use crate::discovery::health::Ejection;
use crate::discovery::traffic::Traffic;
use crate::discovery::{Endpoint, InflightGuard, Registry, Snapshot, Trust};
use crate::metrics::Phase;
use crate::metrics::{Metrics, StateSample};
use crate::openai::{InferenceRequest, Kind};
use crate::tokenizer::{Leading, Tail, TokenSpace, Tokenize, TokenizeError};
use prefix_index::policy::{
    Candidate, LeastLoad, Outcome, Pick, Policy, PrefixAware, PrefixParams, Random, RequestFacts, RoundRobin,
};
use prefix_index::{block_hashes, Change, HashSeed, PodId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    #[error("The model `{0}` does not exist.")]
    UnknownModel(String),
    #[error("The model `{0}` has no ready endpoint.")]
    NoReadyEndpoint(String),
    #[error("No ready endpoint is available.")]
    NoEndpoints,
    #[error("The router has not finished discovering endpoints yet; retry shortly.")]
    NotSynced,
    #[error("None of the model `{0}`'s ready endpoints is in the subset the proxy allowed.")]
    NoEligibleEndpoint(String),
    #[error("Every endpoint of the model `{0}` is at its in-flight limit; retry later.")]
    Overloaded(String),
    #[error("Chat template is passed with request, but --trust-request-chat-template is not set. Refused request with untrusted chat template.")]
    UntrustedChatTemplate,
    #[error("{0}")]
    InvalidRequest(String),
}

/// Where a request goes, and the in-flight count it holds there until dropped.
#[derive(Debug)]
pub struct Decision {
    /// Primary first, then fallbacks.
    pub endpoints: Vec<Arc<Endpoint>>,
    pub outcome: Outcome,
    pub guard: InflightGuard,
    /// The prompt's block hashes as recorded at the primary (moved if another pod serves it).
    hashes: Vec<u64>,
    /// Why this pod (absent when receipts are off).
    pub receipt: Option<Arc<Receipt>>,
}

impl Decision {
    /// `ip:port[,ip:port…]`, IPv6 bracketed.
    pub fn destination(&self) -> String {
        let addrs: Vec<String> = self.endpoints.iter().map(|e| e.addr.to_string()).collect();
        addrs.join(",")
    }
}

/// Which policy picks among a model's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyKind {
    /// Cached-prefix gain weighed against load (the product).
    Prefix,
    Random,
    RoundRobin,
    LeastLoad,
}

/// Where a prompt no pod holds goes, when not every candidate pod's KV events are trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// Balanced while this router sends all of the candidate pods' requests, rendezvous once
    /// their metrics show other senders (router replicas, clients going around it): see
    /// `discovery::traffic`.
    Auto,
    /// Rendezvous hashing of its first block with bounded loads: router replicas that share no
    /// state place it on the same pod, so a conversation's later turns find it whichever replica
    /// routes them.
    Rendezvous,
    /// Least loaded, then the smallest cache footprint: new prompts spread evenly over the pods.
    /// Best for one router (its TTFT tail, under cache pressure most); replicas lose agreement.
    Balanced,
}

/// Routing parameters (from the configuration, or set directly by tests and benches).
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    pub policy: PolicyKind,
    pub params: PrefixParams,
    pub placement: Placement,
    pub block_size: usize,
    pub index_blocks_per_pod: usize,
    pub fallbacks: usize,
    pub max_inflight_per_pod: u64,
    /// Accept a `chat_template` sent in the request (vLLM refuses it unless so started).
    pub trust_request_chat_template: bool,
    /// How long a decision counts as "sent, not yet reported" for pods with trusted events.
    pub pending_ttl: std::time::Duration,
    /// Route receipts kept for `/debug/decisions` (0: no receipts at all).
    pub receipts: usize,
}

/// Per-model routing state: its prefix index and its policy object.
struct ModelState {
    index: RwLock<Indexes>,
    policy: Box<dyn Policy>,
}

type Models = Arc<RwLock<HashMap<String, Arc<ModelState>>>>;

/// A decision's prompt whose rest is tokenized after the decision: its whole hashes are recorded
/// at the chosen pod once known (its leading blocks were recorded with the decision).
struct TailRecord {
    state: Arc<ModelState>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    pod: Arc<Endpoint>,
    capacity: Option<usize>,
    model: String,
    /// Blocks the chosen pod held of the prompt at the decision.
    matched: usize,
    block_size: usize,
}

impl TailRecord {
    async fn finish(self, rest: Tail, seed: HashSeed, mut ids: Vec<u32>) {
        let started = Instant::now();
        let Some(more) = rest.ids_off_path().await else { return };
        ids.extend_from_slice(&more);
        let hashes = block_hashes(&ids, self.block_size, seed);
        {
            let mut index = self.state.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.registry.is_live(&self.pod.model, self.pod.id) {
                index.record(self.pod.id, &hashes, self.capacity, self.pod.trust());
            }
        }
        let matchable = ids.len().saturating_sub(1) / self.block_size.max(1);
        if matchable > 0 {
            let ratio = self.matched.min(matchable) as f64 / matchable as f64;
            self.metrics.matched_ratio.with_label_values(&[&self.model]).observe(ratio);
        }
        self.metrics.observe_phase(Phase::TokenizeTail, started.elapsed());
    }
}

pub struct Router {
    registry: Arc<Registry>,
    tokenizer: Arc<dyn Tokenize>,
    cfg: RoutingConfig,
    models: Models,
    /// Policy for requests that name no model.
    anywhere: Box<dyn Policy>,
    metrics: Arc<Metrics>,
    receipts: Ring,
}

impl Router {
    pub fn new(
        registry: Arc<Registry>,
        tokenizer: Arc<dyn Tokenize>,
        cfg: RoutingConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let anywhere = make_policy(&cfg);
        let receipts = Ring::new(cfg.receipts);
        Self { registry, tokenizer, cfg, models: Arc::default(), anywhere, metrics, receipts }
    }

    /// Routes a parsed request within its model.
    pub async fn route(&self, req: &InferenceRequest) -> Result<Decision, RouteError> {
        self.route_within(req, None).await
    }

    /// Routes a parsed request within its model, among the pods in `subset` when the proxy gives
    /// one (GIE's subset hint).
    pub async fn route_within(
        &self,
        req: &InferenceRequest,
        subset: Option<&[std::net::SocketAddr]>,
    ) -> Result<Decision, RouteError> {
        let started = Instant::now();
        if !self.registry.is_synced() {
            return Err(RouteError::NotSynced);
        }
        let snapshot = self.registry.snapshot();
        let model = snapshot.resolve(&req.model).ok_or_else(|| RouteError::UnknownModel(req.model.clone()))?;
        if model.endpoints.is_empty() {
            return Err(RouteError::NoReadyEndpoint(req.model.clone()));
        }
        self.admit(req)?;
        // Index state and hash seeds belong to the serving model (the request's own name, unless a
        // catch-all serves it), the same model name KV events are seeded with.
        let state = self.model_state(&model.name);

        let (mut matchable, mut space, mut deferred) = (0, "none", false);
        // The prompt's rest, when it is tokenized after the decision: its tokens' seed and the
        // leading ids it continues.
        let mut tail: Option<(Tail, HashSeed, Vec<u32>)> = None;
        let hashes = if matches!(req.kind, Kind::Other) {
            Vec::new()
        } else {
            let t = Instant::now();
            // The trait's implementations fall back internally: an error means "no tokens", unless
            // the request itself cannot be tokenized.
            let leading = match self.tokenizer.tokenize_leading(model, req).await {
                Ok(leading) => Some(leading),
                Err(TokenizeError::Rejected(m)) => return Err(RouteError::InvalidRequest(m)),
                Err(_) => None,
            };
            let block_size = self.cfg.block_size.max(1);
            let (tokens, rest) = match leading {
                Some(Leading { mut tokens, tail: Some(rest) }) => {
                    // The rest can wait for the decision when the leading tokens hold a block to
                    // match, no pod's events are trusted, and the tokens are the local tokenizer's
                    // own (engine-space blocks also come from `/tokenize` and from clients' ids):
                    // the index then holds only what this tokenizer produced, and it never
                    // produced the rest (its pieces are new). Else the index or a pod's cache may
                    // hold it: tokenize it now.
                    let exact = model.endpoints.iter().any(|e| e.trust() == Trust::Exact);
                    let own = matches!(tokens.space, TokenSpace::Local(_));
                    if exact || !own || tokens.ids.len() < block_size {
                        // Without the rest (no room on the pool), the leading tokens are routed on.
                        if let Some(ids) = rest.finish().await {
                            tokens.ids.extend_from_slice(&ids);
                        }
                        (Some(tokens), None)
                    } else {
                        (Some(tokens), Some(rest))
                    }
                }
                Some(Leading { tokens, tail: None }) => (Some(tokens), None),
                None => (None, None),
            };
            self.metrics.observe_phase(Phase::Tokenize, t.elapsed());
            let t = Instant::now();
            let hashes = tokens.map_or_else(Vec::new, |tokens| {
                space = tokens.space.label();
                self.metrics.tokenized.with_label_values(&[space]).inc();
                let seed = HashSeed::new(&model.name, req.cache_salt.as_deref(), tokens.space.id());
                let hashes = block_hashes(&tokens.ids, self.cfg.block_size, seed);
                if let Some(rest) = rest {
                    // The prompt goes on after these tokens: each of their full blocks can match.
                    matchable = tokens.ids.len() / block_size;
                    tail = Some((rest, seed, tokens.ids));
                } else {
                    matchable = tokens.ids.len().saturating_sub(1) / block_size;
                }
                hashes
            });
            self.metrics.observe_phase(Phase::Hash, t.elapsed());
            hashes
        };
        // vLLM always computes a prompt's last token, so a block-aligned prompt's last block is
        // never a cache hit: only blocks before the last token count as matches (all are recorded).
        let lookup = &hashes[..matchable.min(hashes.len())];

        let t = Instant::now();
        // Pods showing a sign of death are passed over; when every pod does, all are tried rather
        // than none (a wrong ejection must not stop the model).
        let eligible: Vec<&Arc<Endpoint>> =
            model.endpoints.iter().filter(|e| subset.is_none_or(|s| s.contains(&e.addr))).collect();
        if eligible.is_empty() {
            return Err(RouteError::NoEligibleEndpoint(req.model.clone()));
        }
        let alive = eligible.iter().any(|e| e.is_routable());
        let candidates: Vec<&Arc<Endpoint>> = eligible
            .into_iter()
            .filter(|e| !alive || e.is_routable())
            .filter(|e| self.cfg.max_inflight_per_pod == 0 || e.inflight() < self.cfg.max_inflight_per_pod)
            .collect();
        if candidates.is_empty() {
            return Err(RouteError::Overloaded(req.model.clone()));
        }
        let facts: Vec<Candidate> = {
            let index = state.index.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let any_exact = candidates.iter().any(|e| e.trust() == Trust::Exact);
            let matches = index.lookup(lookup, any_exact);
            candidates
                .iter()
                .map(|e| Candidate {
                    matched_blocks: matches.matched(e.id, e.trust()),
                    inflight: e.inflight(),
                    index_blocks: index.pod_blocks(e.id, e.trust()),
                    affinity: e.affinity,
                })
                .collect()
        };
        self.metrics.observe_phase(Phase::Lookup, t.elapsed());

        let t = Instant::now();
        // Rendezvous placement keeps routers that share no state in agreement. When every pod's
        // events are trusted they agree through the events; when this router is the pods' only
        // sender there is no one to agree with. Either way a balanced placement (load, then the
        // smaller footprint) serves time to first token better.
        let all_exact = candidates.iter().all(|e| e.trust() == Trust::Exact);
        let rendezvous = !all_exact
            && match self.cfg.placement {
                Placement::Rendezvous => true,
                Placement::Balanced => false,
                Placement::Auto => candidates.iter().any(|e| e.traffic().has_other_senders()),
            };
        let placement = hashes.first().copied().filter(|_| rendezvous);
        let request_facts = RequestFacts { prompt_blocks: lookup.len(), placement };
        let pick = state.policy.pick(&facts, &request_facts);
        self.metrics.observe_phase(Phase::Pick, t.elapsed());
        let Pick::Chosen { order, outcome } = pick else {
            return Err(RouteError::NoReadyEndpoint(req.model.clone()));
        };
        // The first pod in order that still has room: the cap is checked and taken atomically.
        let Some((at, guard)) = order
            .iter()
            .enumerate()
            .find_map(|(at, &i)| InflightGuard::try_new(candidates[i], self.cfg.max_inflight_per_pod).map(|g| (at, g)))
        else {
            return Err(RouteError::Overloaded(req.model.clone()));
        };
        let chosen = order[at];
        if !hashes.is_empty() {
            let mut index = state.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            // A pod that left discovery since this decision began is not recorded: purge takes
            // this lock after publishing, so either it sees our record or we see its snapshot.
            if self.registry.is_live(&model.name, candidates[chosen].id) {
                let capacity = self.capacity_blocks(candidates[chosen]);
                index.record(candidates[chosen].id, &hashes, capacity, candidates[chosen].trust());
            }
            drop(index);
            deferred = tail.is_some();
            match tail.take() {
                Some((rest, seed, ids)) => {
                    let pending = TailRecord {
                        state: Arc::clone(&state),
                        registry: Arc::clone(&self.registry),
                        metrics: Arc::clone(&self.metrics),
                        pod: Arc::clone(candidates[chosen]),
                        capacity: self.capacity_blocks(candidates[chosen]),
                        model: req.model.clone(),
                        matched: facts[chosen].matched_blocks,
                        block_size: self.cfg.block_size,
                    };
                    tokio::spawn(pending.finish(rest, seed, ids));
                }
                None if !lookup.is_empty() => {
                    let ratio = facts[chosen].matched_blocks as f64 / lookup.len() as f64;
                    self.metrics.matched_ratio.with_label_values(&[&req.model]).observe(ratio);
                }
                None => {}
            }
        }
        self.metrics.decisions.with_label_values(&[&req.model, outcome.label()]).inc();
        self.metrics.observe_phase(Phase::Total, started.elapsed());
        let receipt = self.receipts.enabled().then(|| {
            let mut listed: Vec<usize> = order.iter().copied().take(receipt::LISTED).collect();
            if !listed.contains(&chosen) {
                listed.push(chosen);
            }
            let rendezvous = placement.is_some() && facts.iter().all(|f| f.matched_blocks == 0) && !lookup.is_empty();
            let r = Arc::new(Receipt {
                at_ms: receipt::now_ms(),
                model: model.name.clone(),
                outcome: outcome.label(),
                tokens: space,
                prompt_blocks: lookup.len(),
                tail: deferred,
                placement: if rendezvous { "rendezvous" } else { "cost" },
                chosen: candidates[chosen].addr,
                candidates: listed
                    .iter()
                    .map(|&i| {
                        let (e, f) = (candidates[i], &facts[i]);
                        let terms = state.policy.terms(&facts, &request_facts, i);
                        CandidateReceipt::new(e.addr, f.matched_blocks, f.inflight, e.trust().label(), terms)
                    })
                    .collect(),
                decision_us: started.elapsed().as_micros() as u64,
            });
            self.receipts.push(Arc::clone(&r));
            r
        });
        let endpoints: Vec<Arc<Endpoint>> =
            order[at..].iter().take(1 + self.cfg.fallbacks).map(|&i| Arc::clone(candidates[i])).collect();
        Ok(Decision { endpoints, outcome, guard, hashes, receipt })
    }

    /// The proxy reports which pod served a decided request. When it is not the primary, Envoy
    /// could not use the primary (a refused or reset connection, retried on the next address):
    /// that pod leaves routing until a probe passes, and the request's prefix and in-flight count
    /// move to the pod that served it, so the conversation follows.
    pub fn served(&self, d: &mut Decision, served: std::net::SocketAddr) {
        let primary = Arc::clone(&d.endpoints[0]);
        if primary.addr == served {
            self.metrics.served_reports.with_label_values(&["match"]).inc();
            return;
        }
        self.metrics.served_reports.with_label_values(&["mismatch"]).inc();
        primary.eject(Ejection::ServedElsewhere, &self.metrics);
        let snapshot = self.registry.snapshot();
        let Some(model) = snapshot.models.get(&*primary.model) else { return };
        let Some(pod) = model.endpoints.iter().find(|e| e.addr == served) else { return };
        if !d.hashes.is_empty() {
            let state = self.model_state(&primary.model);
            let mut index = state.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.registry.is_live(&primary.model, pod.id) {
                index.record(pod.id, &d.hashes, self.capacity_blocks(pod), pod.trust());
            }
        }
        d.guard = InflightGuard::new(Arc::clone(pod));
    }

    /// The tokens a request would be routed with (for `/debug/tokenize`); nothing is recorded.
    pub async fn tokens_for(&self, req: &InferenceRequest) -> Result<crate::tokenizer::Tokens, RouteError> {
        let snapshot = self.registry.snapshot();
        let model = snapshot.resolve(&req.model).ok_or_else(|| RouteError::UnknownModel(req.model.clone()))?;
        self.admit(req)?;
        self.tokenizer.tokenize(model, req).await.map_err(|e| match e {
            TokenizeError::Rejected(m) => RouteError::InvalidRequest(m),
            _ => RouteError::NoReadyEndpoint(req.model.clone()),
        })
    }

    /// What the router refuses before any work: a request-supplied chat template unless trusted.
    fn admit(&self, req: &InferenceRequest) -> Result<(), RouteError> {
        match &req.kind {
            Kind::Chat(c) if c.chat_template.is_some() && !self.cfg.trust_request_chat_template => {
                Err(RouteError::UntrustedChatTemplate)
            }
            _ => Ok(()),
        }
    }

    /// Applies a pod's KV-event changes to its model's event index.
    pub fn apply_events(&self, model: &str, pod: PodId, changes: &[Change]) -> Applied {
        let state = self.model_state(model);
        let mut index = state.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        index.apply(model, pod, changes)
    }

    /// The pod's reported cache is void (it restarted, or events were lost): forget it.
    pub fn forget_events(&self, model: &str, pod: PodId) {
        let state = self.model_state(model);
        state.index.write().unwrap_or_else(std::sync::PoisonError::into_inner).forget_events(pod);
    }

    /// Blocks a pod reports holding (its KV events), 0 when unknown.
    pub fn event_blocks(&self, model: &str, pod: PodId) -> usize {
        let models = self.models.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        models
            .get(model)
            .map_or(0, |m| m.index.read().unwrap_or_else(std::sync::PoisonError::into_inner).event_blocks(pod))
    }

    /// The pod's real KV cache in the router's blocks, when the pod has said.
    fn capacity_blocks(&self, e: &Endpoint) -> Option<usize> {
        e.cache_tokens().map(|t| (t / self.cfg.block_size.max(1) as u64) as usize)
    }

    /// The latest route receipts, newest first.
    pub fn receipts(&self, n: usize) -> Vec<Arc<Receipt>> {
        self.receipts.recent(n)
    }

    /// Models discovery knows now.
    pub fn model_count(&self) -> usize {
        self.registry.snapshot().models.len()
    }

    /// Routes a request that names no model (no body, or a body without one) to any ready pod,
    /// on load alone.
    pub fn route_anywhere(&self, subset: Option<&[std::net::SocketAddr]>) -> Result<Decision, RouteError> {
        if !self.registry.is_synced() {
            return Err(RouteError::NotSynced);
        }
        let snapshot = self.registry.snapshot();
        let eligible: Vec<&Arc<Endpoint>> =
            snapshot.endpoints().filter(|e| subset.is_none_or(|s| s.contains(&e.addr))).collect();
        if eligible.is_empty() && subset.is_some() {
            return Err(RouteError::NoEligibleEndpoint(String::new()));
        }
        let alive = eligible.iter().any(|e| e.is_routable());
        let all: Vec<&Arc<Endpoint>> = eligible.into_iter().filter(|e| !alive || e.is_routable()).collect();
        let facts: Vec<Candidate> = all
            .iter()
            .map(|e| Candidate { matched_blocks: 0, inflight: e.inflight(), index_blocks: 0, affinity: e.affinity })
            .collect();
        match self.anywhere.pick(&facts, &RequestFacts { prompt_blocks: 0, placement: None }) {
            Pick::Chosen { order, outcome } => {
                self.metrics.decisions.with_label_values(&["", outcome.label()]).inc();
                Ok(self.decision(order.iter().map(|&i| all[i]), outcome))
            }
            Pick::NoCandidates => Err(RouteError::NoEndpoints),
        }
    }

    fn decision<'a>(&self, ordered: impl Iterator<Item = &'a Arc<Endpoint>>, outcome: Outcome) -> Decision {
        let endpoints: Vec<Arc<Endpoint>> = ordered.take(1 + self.cfg.fallbacks).cloned().collect();
        let guard = InflightGuard::new(Arc::clone(&endpoints[0]));
        Decision { endpoints, outcome, guard, hashes: Vec::new(), receipt: None }
    }

    fn model_state(&self, model: &str) -> Arc<ModelState> {
        if let Some(s) = self.models.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(model) {
            return Arc::clone(s);
        }
        let mut models = self.models.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(models.entry(model.to_owned()).or_insert_with(|| {
            Arc::new(ModelState {
                index: RwLock::new(Indexes::new(self.cfg.index_blocks_per_pod, self.cfg.pending_ttl)),
                policy: make_policy(&self.cfg),
            })
        }))
    }

    /// Drops index entries of pods (and models) that left discovery.
    pub fn purge(&self, snapshot: &Snapshot) {
        let mut models = self.models.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        models.retain(|name, _| snapshot.models.contains_key(name));
        for (name, state) in models.iter() {
            let live: HashSet<PodId> = snapshot.models[name].endpoints.iter().map(|e| e.id).collect();
            let mut index = state.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            let gone: Vec<PodId> = index.pods().into_iter().filter(|p| !live.contains(p)).collect();
            for pod in gone {
                index.remove_pod(pod);
            }
        }
    }

    /// Purges on every discovery change until the registry goes away or `stop` fires.
    pub async fn follow_discovery(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut changes = self.registry.subscribe();
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
            let snapshot = Arc::clone(&changes.borrow_and_update());
            self.purge(&snapshot);
        }
    }

    /// Live state for the scrape-time gauges.
    pub fn sample(&self) -> StateSample {
        let snapshot = self.registry.snapshot();
        let models = self.models.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut s = StateSample::default();
        for (name, model) in &snapshot.models {
            s.endpoints.push((name.clone(), model.endpoints.len() as u64));
            s.ejected.push((name.clone(), model.endpoints.iter().filter(|e| !e.is_routable()).count() as u64));
            for t in [Trust::Exact, Trust::Degraded, Trust::History] {
                let n = model.endpoints.iter().filter(|e| e.trust() == t).count() as u64;
                s.trust.push((name.clone(), t.label(), n));
            }
            for t in [Traffic::Alone, Traffic::Shared, Traffic::Counting, Traffic::Unknown] {
                let n = model.endpoints.iter().filter(|e| e.traffic() == t).count() as u64;
                s.traffic.push((name.clone(), t.label(), n));
            }
            let index = models.get(name).map(|m| m.index.read().unwrap_or_else(std::sync::PoisonError::into_inner));
            for e in &model.endpoints {
                s.inflight.push((name.clone(), e.addr.to_string(), e.inflight()));
                let blocks = index.as_ref().map_or(0, |i| i.pod_blocks(e.id, e.trust()));
                s.index_blocks.push((name.clone(), e.addr.to_string(), blocks as u64));
            }
        }
        s
    }
}

fn make_policy(cfg: &RoutingConfig) -> Box<dyn Policy> {
    match cfg.policy {
        PolicyKind::Prefix => Box::new(PrefixAware(cfg.params)),
        PolicyKind::Random => Box::new(Random),
        PolicyKind::RoundRobin => Box::new(RoundRobin::default()),
        PolicyKind::LeastLoad => Box::new(LeastLoad),
    }
}

mod indexes;
pub mod receipt;
#[cfg(test)]
mod tests;

pub use indexes::Applied;
use indexes::Indexes;
use receipt::{CandidateReceipt, Receipt, Ring};
