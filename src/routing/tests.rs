//! `Router` in-process, with a scripted tokenizer: decisions, typed errors, purge and in-flight
//! guards, in milliseconds.

use super::*;
use crate::testkit::{completion, kit, routing_config, spec};
use std::sync::atomic::Ordering;

fn prompt(n: usize) -> String {
    format!("{}{}", "shared system prompt ".repeat(8), n)
}

#[tokio::test]
async fn a_conversation_stays_on_its_pod_and_new_prompts_spread_on_load() {
    let k = kit(vec![spec("m", 4)], routing_config());
    let first = k.router.route(&completion("m", &prompt(1))).await.expect("routed");
    assert_eq!(first.outcome, Outcome::Miss);
    let pod = first.endpoints[0].addr;
    // Same prefix, first decision still in flight: the cached prefix outweighs one request of load.
    let again = k.router.route(&completion("m", &format!("{} and more", prompt(1)))).await.expect("routed");
    assert_eq!((again.endpoints[0].addr, again.outcome), (pod, Outcome::PrefixHit));
    // A prompt no pod holds is placed by rendezvous on its first block: a second replica, with its
    // own (different) in-flight counts and an empty index, places it on the same pod.
    let other = k.router.route(&completion("m", "something else entirely, long enough")).await.expect("routed");
    let replica = kit(vec![spec("m", 4)], routing_config());
    let same = replica.router.route(&completion("m", "something else entirely, long enough")).await.expect("routed");
    assert_eq!((other.outcome, same.outcome), (Outcome::Miss, Outcome::Miss));
    assert_eq!(other.endpoints[0].addr, same.endpoints[0].addr);
    assert_eq!(k.tokenizer.calls.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn balanced_placement_spreads_new_prompts_evenly_and_conversations_still_stay() {
    let cfg = RoutingConfig { placement: Placement::Balanced, ..routing_config() };
    let k = kit(vec![spec("m", 4)], cfg);
    let mut per_pod: HashMap<std::net::SocketAddr, usize> = HashMap::new();
    for n in 0..8 {
        // Each decision ends before the next: no pod is busier, only the history differs.
        let d = k.router.route(&completion("m", &format!("{n}: a conversation opens with its own words"))).await;
        let d = d.expect("routed");
        assert_eq!(d.outcome, Outcome::Miss);
        *per_pod.entry(d.endpoints[0].addr).or_default() += 1;
    }
    assert_eq!(per_pod.values().copied().collect::<Vec<_>>(), [2; 4], "{per_pod:?}");
    let follow_up = k.router.route(&completion("m", "3: a conversation opens with its own words, then more")).await;
    assert_eq!(follow_up.expect("routed").outcome, Outcome::PrefixHit);
}

#[tokio::test]
async fn auto_placement_balances_while_alone_and_agrees_with_replicas_once_others_send() {
    use crate::discovery::traffic::Traffic;
    let cfg = RoutingConfig { placement: Placement::Auto, ..routing_config() };
    let k = kit(vec![spec("m", 4)], cfg);
    let pods: Vec<Arc<Endpoint>> = k.registry.snapshot().endpoints().cloned().collect();
    let mut per_pod: HashMap<std::net::SocketAddr, usize> = HashMap::new();
    for n in 0..8 {
        // The first read of the pods' metrics has not come yet for the first four, then it says
        // this router is alone: both are balanced.
        if n == 4 {
            for e in &pods {
                e.set_traffic(Traffic::Alone);
            }
        }
        let d = k.router.route(&completion("m", &format!("{n}: a conversation opens with its own words"))).await;
        *per_pod.entry(d.expect("routed").endpoints[0].addr).or_default() += 1;
    }
    assert_eq!(per_pod.values().copied().collect::<Vec<_>>(), [2; 4], "{per_pod:?}");
    assert_eq!(pods.iter().map(|e| e.routed()).sum::<u64>(), 8, "every decision is counted at its pod");
    // One pod's metrics show others' requests: new prompts go where a replica with no history
    // (rendezvous) puts them, for every prompt.
    pods[2].set_traffic(Traffic::Shared);
    let replica = kit(vec![spec("m", 4)], routing_config());
    for n in 0..6 {
        let text = format!("#{n}#{n}: another conversation, new to both");
        let ours = k.router.route(&completion("m", &text)).await.expect("routed");
        let theirs = replica.router.route(&completion("m", &text)).await.expect("routed");
        assert_eq!(ours.endpoints[0].addr, theirs.endpoints[0].addr, "prompt {n}");
    }
}

#[tokio::test]
async fn unknown_models_unready_models_and_an_unsynced_registry_are_typed_errors() {
    let k = kit(vec![spec("m", 2), spec("empty", 0)], routing_config());
    assert_eq!(
        k.router.route(&completion("nope", "hi")).await.map(|_| ()),
        Err(RouteError::UnknownModel("nope".into()))
    );
    assert_eq!(
        k.router.route(&completion("empty", "hi")).await.map(|_| ()),
        Err(RouteError::NoReadyEndpoint("empty".into()))
    );
    let unsynced = Router::new(
        Arc::new(Registry::new()),
        Arc::clone(&k.tokenizer) as Arc<dyn Tokenize>,
        routing_config(),
        Arc::clone(&k.metrics),
    );
    assert_eq!(unsynced.route(&completion("m", "hi")).await.map(|_| ()), Err(RouteError::NotSynced));
    assert_eq!(unsynced.route_anywhere(None).map(|_| ()), Err(RouteError::NotSynced));
}

#[tokio::test]
async fn a_tokenizer_failure_still_routes_on_load() {
    let k = kit(vec![spec("m", 2)], routing_config());
    let d = k.router.route(&completion("m", "FAIL please")).await.expect("routed despite the tokenizer");
    assert_eq!(d.outcome, Outcome::LoadOnly, "no tokens: placed on load");
}

#[tokio::test]
async fn the_guard_counts_until_dropped_and_the_cap_refuses_when_every_pod_is_full() {
    let mut cfg = routing_config();
    cfg.max_inflight_per_pod = 1;
    let k = kit(vec![spec("m", 2)], cfg);
    let a = k.router.route(&completion("m", &prompt(1))).await.expect("routed");
    assert_eq!(a.endpoints[0].inflight(), 1);
    let b = k.router.route(&completion("m", &prompt(1))).await.expect("the other pod");
    assert_ne!(a.endpoints[0].addr, b.endpoints[0].addr, "a full pod is not a candidate");
    assert_eq!(k.router.route(&completion("m", &prompt(1))).await.map(|_| ()), Err(RouteError::Overloaded("m".into())));
    let freed = a.endpoints[0].addr;
    drop(a);
    let c = k.router.route(&completion("m", &prompt(1))).await.expect("room again");
    assert_eq!(c.endpoints[0].addr, freed);
}

#[tokio::test]
async fn purge_forgets_pods_that_left_and_their_conversations_move() {
    let k = kit(vec![spec("m", 2)], routing_config());
    let first = k.router.route(&completion("m", &prompt(7))).await.expect("routed");
    let gone = first.endpoints[0].addr;
    drop(first);
    // The pod that held the prefix leaves discovery.
    let mut remaining = spec("m", 2);
    remaining.endpoints.retain(|e| e.addr != gone);
    k.registry.publish(vec![remaining]);
    k.router.purge(&k.registry.snapshot());
    let sample = k.router.sample();
    assert_eq!(sample.index_blocks.len(), 1, "only the live pod is sampled");
    let next = k.router.route(&completion("m", &prompt(7))).await.expect("routed");
    assert_ne!(next.endpoints[0].addr, gone);
    assert_eq!(next.outcome, Outcome::Miss, "nothing of the gone pod's index is left to match");
}

#[tokio::test]
async fn fallbacks_follow_the_primary_and_requests_without_a_model_go_anywhere() {
    let mut cfg = routing_config();
    cfg.fallbacks = 2;
    let k = kit(vec![spec("m", 3)], cfg);
    let d = k.router.route(&completion("m", &prompt(3))).await.expect("routed");
    assert_eq!(d.endpoints.len(), 3);
    let dest = d.destination();
    assert_eq!(dest.split(',').count(), 3, "{dest}");
    assert_eq!(d.endpoints[0].inflight(), 1, "only the primary is counted");
    assert_eq!(d.endpoints[1].inflight(), 0);
    let any = k.router.route_anywhere(None).expect("any pod");
    assert_eq!(any.outcome, Outcome::LoadOnly);
}

fn chat_with_template(template: &str) -> InferenceRequest {
    let body = serde_json::json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "chat_template": template
    });
    crate::openai::parse(crate::openai::Endpoint::ChatCompletions, body.to_string().as_bytes()).expect("parses")
}

#[tokio::test]
async fn a_request_chat_template_is_refused_unless_trusted_and_then_bounded() {
    let k = kit(vec![spec("m", 2)], routing_config());
    let benign = chat_with_template("{% for m in messages %}{{ m.content }}{% endfor %}");
    assert_eq!(k.router.route(&benign).await.map(|_| ()), Err(RouteError::UntrustedChatTemplate));
    assert_eq!(k.router.tokens_for(&benign).await.map(|_| ()), Err(RouteError::UntrustedChatTemplate));

    // Trusted, with the model's real tokenizer: a benign template routes, a hostile one is a 400.
    let registry = Arc::new(Registry::new());
    let mut with_tokenizer = spec("m", 2);
    with_tokenizer.tokenizer =
        Some(Arc::new(hf_chat::HfTokenizer::from_dir(&crate::test_fixture_dir()).expect("fixture")));
    registry.publish(vec![with_tokenizer]);
    let mut cfg = routing_config();
    cfg.trust_request_chat_template = true;
    let local = crate::tokenizer::LocalTokenizer::new(4, None);
    let router = Router::new(registry, Arc::new(local), cfg, Arc::clone(&k.metrics));
    assert!(router.route(&benign).await.is_ok());
    let hostile =
        chat_with_template("{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}");
    let started = std::time::Instant::now();
    let refused = router.route(&hostile).await.map(|_| ());
    assert!(matches!(refused, Err(RouteError::InvalidRequest(ref m)) if m.contains("budget")), "{refused:?}");
    eprintln!("hostile template refused after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_in_flight_cap_is_hard_under_concurrent_decisions() {
    let mut cfg = routing_config();
    cfg.max_inflight_per_pod = 1;
    let k = kit(vec![spec("m", 2)], cfg);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let router = Arc::clone(&k.router);
            tokio::spawn(async move { router.route(&completion("m", &prompt(i))).await })
        })
        .collect();
    let mut held = Vec::new();
    for t in tasks {
        if let Ok(d) = t.await.expect("joined") {
            held.push(d);
        }
    }
    assert_eq!(held.len(), 2, "one per pod");
    for e in &k.registry.snapshot().models["m"].endpoints {
        assert_eq!(e.inflight(), 1);
    }
}

#[tokio::test]
async fn a_pod_removed_while_a_decision_is_under_way_is_not_re_added_to_the_index() {
    let k = kit(vec![spec("m", 1)], routing_config());
    let (registry, router) = (Arc::clone(&k.registry), Arc::downgrade(&k.router));
    *k.tokenizer.on_call.lock().expect("lock") = Some(Box::new(move || {
        // Discovery replaces the pod (new address, new id) and the router purges, mid-request.
        let mut moved = spec("m", 1);
        moved.endpoints[0].addr = "10.0.9.9:8000".parse().expect("addr");
        moved.endpoints[0].key = "m/moved".into();
        registry.publish(vec![moved]);
        if let Some(r) = router.upgrade() {
            r.purge(&registry.snapshot());
        }
    }));
    let d = k.router.route(&completion("m", &prompt(1))).await.expect("routed on the snapshot it began with");
    let gone = d.endpoints[0].id;
    let state = k.router.model_state("m");
    let index = state.index.read().expect("lock");
    assert!(index.pods().into_iter().all(|p| p != gone), "the removed pod's blocks were not recorded after its purge");
}

#[tokio::test]
async fn a_block_aligned_prompt_s_last_block_is_not_counted_as_cached() {
    let k = kit(vec![spec("m", 2)], routing_config());
    // Block size 4: "abcdefgh" is exactly two blocks; vLLM recomputes the last token, so a repeat
    // can hit only the first block.
    let first = k.router.route(&completion("m", "abcdefgh")).await.expect("routed");
    assert_eq!(first.outcome, Outcome::Miss);
    let state = k.router.model_state("m");
    assert_eq!(
        state.index.read().expect("lock").pod_blocks(first.endpoints[0].id, Trust::History),
        2,
        "both blocks recorded"
    );
    drop((state, first));
    let again = k.router.route(&completion("m", "abcdefgh")).await.expect("routed");
    assert_eq!(again.outcome, Outcome::PrefixHit);
    let single = k.router.route(&completion("m", "abcd")).await.expect("routed");
    assert_eq!(single.outcome, Outcome::LoadOnly, "a one-block prompt has nothing cacheable before its last token");
}

/// A router with the Qwen3 tokenizer and its piece cache, wired as the server wires them.
fn piece_router(specs: Vec<crate::discovery::ModelSpec>) -> (Router, Arc<Metrics>) {
    piece_router_with(specs, |t| Arc::new(t))
}

/// `piece_router`, its tokenization wrapped by `wrap`.
fn piece_router_with(
    specs: Vec<crate::discovery::ModelSpec>,
    wrap: impl FnOnce(crate::tokenizer::Tokenization) -> Arc<dyn Tokenize>,
) -> (Router, Arc<Metrics>) {
    use crate::tokenizer::{LocalTokenizer, PieceCache, TokenCache, Tokenization};
    let registry = Arc::new(Registry::new());
    let tok = Arc::new(hf_chat::HfTokenizer::from_dir(&crate::test_fixture_dir()).expect("fixture"));
    registry.publish(
        specs.into_iter().map(|s| crate::discovery::ModelSpec { tokenizer: Some(Arc::clone(&tok)), ..s }).collect(),
    );
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let cache = Arc::new(TokenCache::new(1 << 20));
    let local = LocalTokenizer::new(4, Some(PieceCache { cache: Arc::clone(&cache), metrics: Arc::clone(&metrics) }));
    let tokenization = Tokenization::new(local, None, cache, Arc::clone(&metrics));
    let cfg = RoutingConfig { block_size: 16, ..routing_config() };
    (Router::new(registry, wrap(tokenization), cfg, Arc::clone(&metrics)), metrics)
}

fn chat(messages: &[serde_json::Value]) -> InferenceRequest {
    let body = serde_json::json!({"model": "m", "messages": messages});
    crate::openai::parse(crate::openai::Endpoint::ChatCompletions, body.to_string().as_bytes()).expect("parses")
}

fn turn(role: &str, text: &str, times: usize) -> serde_json::Value {
    serde_json::json!({"role": role, "content": text.repeat(times)})
}

/// Tails tokenized and recorded after their decisions so far.
fn tails_done(metrics: &Metrics) -> u64 {
    metrics.phase_us.with_label_values(&["tokenize_tail"]).get_sample_count()
}

async fn wait_for_tails(metrics: &Metrics, n: u64) {
    for _ in 0..200 {
        if tails_done(metrics) >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{} of {n} tails recorded", tails_done(metrics));
}

#[tokio::test]
async fn a_chat_s_new_text_is_tokenized_after_the_decision_and_the_whole_prompt_is_recorded() {
    let (router, metrics) = piece_router(vec![spec("m", 4)]);
    let system = turn("system", "You answer questions about caches and their eviction. ", 30);
    let q1 = turn("user", "Which block goes first when the pool is full? ", 6);
    let a1 = turn("assistant", "The least recently used one, unless it is pinned. ", 4);
    let q2 = turn("user", "And when two requests share it? ", 5);

    // A new conversation: nothing is known yet, so it is tokenized whole before the decision.
    let first = router.route(&chat(&[system.clone(), q1.clone()])).await.expect("routed");
    let pod = first.endpoints[0].addr;
    let first_receipt = first.receipt.clone().expect("receipt");
    assert!(!first_receipt.tail);
    drop(first);
    assert_eq!(tails_done(&metrics), 0);

    // The same system prompt with a new question: the decision has the system prompt's tokens
    // (from the piece cache) and finds its blocks; the question is tokenized after.
    let other = router.route(&chat(&[system.clone(), turn("user", "What is a block? ", 3)])).await.expect("routed");
    let r = other.receipt.clone().expect("receipt");
    assert!(r.tail, "{r:?}");
    assert_eq!((other.endpoints[0].addr, other.outcome), (pod, Outcome::PrefixHit));
    let system_blocks = r.candidates.iter().map(|c| c.matched_blocks).max().unwrap_or(0);
    assert!(system_blocks >= 15 && r.prompt_blocks == system_blocks, "{r:?}");
    drop(other);
    wait_for_tails(&metrics, 1).await;

    // The next turn of the first conversation: its earlier turn's blocks, recorded whole with the
    // first decision, match beyond the system prompt; its new text (the reply and the next
    // question) is again tokenized after the decision, then recorded too.
    let next = router.route(&chat(&[system.clone(), q1.clone(), a1.clone(), q2.clone()])).await.expect("routed");
    let r = next.receipt.clone().expect("receipt");
    assert!(r.tail, "{r:?}");
    assert_eq!(next.endpoints[0].addr, pod);
    let matched = r.candidates.iter().find(|c| c.pod == pod).map_or(0, |c| c.matched_blocks);
    assert!(matched > system_blocks, "matched {matched}, the system prompt alone {system_blocks}");
    drop(next);
    wait_for_tails(&metrics, 2).await;

    // Once recorded, the whole of that turn is known: the same prompt again matches all of it,
    // with nothing left to tokenize after.
    let messages = [system, q1, a1, q2];
    let whole = router.tokens_for(&chat(&messages)).await.expect("tokens");
    let again = router.route(&chat(&messages)).await.expect("routed");
    let r = again.receipt.clone().expect("receipt");
    let full_blocks = (whole.ids.len() - 1) / 16;
    assert!(!r.tail && r.prompt_blocks == full_blocks && full_blocks > matched, "{r:?}");
    assert_eq!(r.candidates.iter().find(|c| c.pod == pod).map(|c| c.matched_blocks), Some(full_blocks));
}

#[tokio::test]
async fn with_trusted_kv_events_a_chat_is_tokenized_whole_before_the_decision() {
    let (router, metrics) = piece_router(vec![spec("m", 2)]);
    for e in router.registry.snapshot().endpoints() {
        e.set_trust(Trust::Exact);
    }
    let system = turn("system", "You answer questions about caches and their eviction. ", 30);
    drop(router.route(&chat(&[system.clone(), turn("user", "A first question? ", 4)])).await.expect("routed"));
    // The pods' caches may hold text this router never tokenized: the decision waits for it.
    let messages = [system, turn("user", "A second question, not seen before? ", 4)];
    let d = router.route(&chat(&messages)).await.expect("routed");
    let r = d.receipt.clone().expect("receipt");
    let whole = router.tokens_for(&chat(&messages)).await.expect("tokens");
    assert!(!r.tail && r.prompt_blocks == (whole.ids.len() - 1) / 16, "{r:?}");
    // A long new text (over the inline limit) is tokenized off the async workers, still before.
    let long = [messages[0].clone(), turn("user", "A long document, every line of it new to the router. ", 800)];
    let d = router.route(&chat(&long)).await.expect("routed");
    let r = d.receipt.clone().expect("receipt");
    let whole = router.tokens_for(&chat(&long)).await.expect("tokens");
    assert!(!r.tail && r.prompt_blocks == (whole.ids.len() - 1) / 16 && r.prompt_blocks > 500, "{r:?}");
    assert_eq!(tails_done(&metrics), 0);
}

/// The local tokenizer's tokens as a verified-equal one reports them: in the engine's space.
struct EngineEqual(crate::tokenizer::Tokenization);

impl Tokenize for EngineEqual {
    fn tokenize<'a>(
        &'a self,
        model: &'a Arc<crate::discovery::Model>,
        req: &'a InferenceRequest,
    ) -> futures::future::BoxFuture<'a, Result<crate::tokenizer::Tokens, TokenizeError>> {
        Box::pin(async move {
            let mut tokens = self.0.tokenize(model, req).await?;
            tokens.space = crate::tokenizer::TokenSpace::Engine;
            Ok(tokens)
        })
    }

    fn tokenize_leading<'a>(
        &'a self,
        model: &'a Arc<crate::discovery::Model>,
        req: &'a InferenceRequest,
    ) -> futures::future::BoxFuture<'a, Result<Leading, TokenizeError>> {
        Box::pin(async move {
            let mut leading = self.0.tokenize_leading(model, req).await?;
            leading.tokens.space = crate::tokenizer::TokenSpace::Engine;
            Ok(leading)
        })
    }
}

#[tokio::test]
async fn engine_space_tokens_are_tokenized_whole_before_the_decision() {
    // Engine-space blocks also come from `/tokenize` and from clients' token ids: text this
    // router's piece cache never saw can be in the index.
    let (router, metrics) = piece_router_with(vec![spec("m", 2)], |t| Arc::new(EngineEqual(t)));
    let system = turn("system", "You answer questions about caches and their eviction. ", 30);
    drop(router.route(&chat(&[system.clone(), turn("user", "A first question? ", 4)])).await.expect("routed"));
    let messages = [system, turn("user", "A second question, not seen before? ", 4)];
    let d = router.route(&chat(&messages)).await.expect("routed");
    let r = d.receipt.clone().expect("receipt");
    let whole = router.tokens_for(&chat(&messages)).await.expect("tokens");
    assert!(!r.tail && r.tokens == "engine" && r.prompt_blocks == (whole.ids.len() - 1) / 16, "{r:?}");
    assert_eq!(tails_done(&metrics), 0);
}
