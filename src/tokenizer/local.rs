//! Local tokenization: the model's configured HF tokenizer (chat template applied), else a byte
//! approximation that keeps prefix affinity — equal leading text gives equal leading "tokens".
//!
//! A rendered chat — or a completion prompt written with the template's added tokens — is
//! tokenized piece by piece between those tokens, exactly as `tokenizers` does it (see
//! [`HfTokenizer::pieces`]), and each piece's ids are kept in the token cache: a conversation's
//! system prompt and earlier turns are tokenized once, not every turn.

use super::{CpuPool, Leading, TokenCache, TokenSpace, Tokenize, TokenizeError, Tokens};
use crate::discovery::Model;
use crate::metrics::Metrics;
use crate::openai::{InferenceRequest, Kind, Prompt};
use futures::future::BoxFuture;
use hf_chat::{ChatInput, HfTokenizer, Piece};
use std::sync::Arc;

#[derive(Clone)]
pub struct LocalTokenizer {
    bytes_per_token: usize,
    /// Where pieces' ids are kept (`None`: every prompt is tokenized whole).
    pieces: Option<PieceCache>,
    limits: Option<Limits>,
}

/// What bounds local tokenization's CPU and memory per request: the pool it runs on and the
/// most text (bytes) it tokenizes; past that, only the leading part is tokenized — enough to route
/// on its prefix. Each degradation is counted in `prefix_router_tokenize_degraded_total`.
#[derive(Clone)]
pub struct Limits {
    pub cpu: Arc<CpuPool>,
    pub max_bytes: usize,
    pub metrics: Arc<Metrics>,
}

/// The cache pieces' ids are kept in, and the counter of tokens reused from it.
#[derive(Clone)]
pub struct PieceCache {
    pub cache: Arc<TokenCache>,
    pub metrics: Arc<Metrics>,
}

impl PieceCache {
    /// Appends the ids of `pieces` (a cut of one text, in order) to `ids`, each text piece from
    /// the cache or tokenized and kept. With `stop_at_new`, stops at the first text piece the
    /// cache does not hold, once `ids` has some, and returns that piece.
    fn extend<'t>(
        &self,
        tok: &HfTokenizer,
        pieces: &[Piece<'t>],
        ids: &mut Vec<u32>,
        stop_at_new: bool,
    ) -> Result<Option<&'t str>, String> {
        let space = TokenSpace::Local(tok.fingerprint());
        let tokenizer_key = format!("{:016x}", tok.fingerprint());
        let (mut reused, mut tokenized) = (0, 0);
        let mut stopped = None;
        for piece in pieces {
            match *piece {
                Piece::Added(id) => {
                    ids.push(id);
                    tokenized += 1;
                }
                Piece::Text(t) => {
                    let key = TokenCache::key("piece", &tokenizer_key, t.as_bytes());
                    if let Some((_, cached)) = self.cache.get(key) {
                        ids.extend_from_slice(&cached);
                        reused += cached.len();
                    } else if stop_at_new && !ids.is_empty() {
                        stopped = Some(t);
                        break;
                    } else {
                        let piece_ids = tok.encode(t, false)?;
                        ids.extend_from_slice(&piece_ids);
                        tokenized += piece_ids.len();
                        self.cache.insert(key, (space, Arc::from(piece_ids)));
                    }
                }
            }
        }
        self.metrics.piece_tokens.with_label_values(&["reused"]).inc_by(reused as u64);
        self.metrics.piece_tokens.with_label_values(&["tokenized"]).inc_by(tokenized as u64);
        Ok(stopped)
    }
}

/// The rest of a prompt whose leading pieces came from the piece cache, from its first new piece
/// on: tokenized after the decision, off the request's path.
pub struct Tail {
    tok: Arc<HfTokenizer>,
    text: String,
    /// The post-processor's closing special tokens, if any.
    after: Vec<u32>,
    pieces: PieceCache,
    cpu: Option<Arc<CpuPool>>,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the text: prompts are user data.
        f.debug_struct("Tail").field("bytes", &self.text.len()).finish_non_exhaustive()
    }
}

impl Tail {
    /// The rest's ids, tokenized here (each new piece kept in the cache): what follows the
    /// leading ids to make the whole prompt's.
    pub fn ids(self) -> Result<Vec<u32>, String> {
        let mut ids = Vec::new();
        match self.tok.pieces(&self.text) {
            Some(cut) => {
                self.pieces.extend(&self.tok, &cut, &mut ids, false)?;
            }
            None => ids = self.tok.encode(&self.text, false)?,
        }
        ids.extend_from_slice(&self.after);
        Ok(ids)
    }

    /// [`Self::ids`] now: inline when the rest is short, else on the pool as a long input is
    /// (see `INLINE_BYTES`); `None` when the pool has no room or the text fails to tokenize.
    pub async fn finish(self) -> Option<Vec<u32>> {
        if self.text.len() <= INLINE_BYTES {
            return self.ids().ok();
        }
        self.ids_off_path().await
    }

    /// [`Self::ids`] on the tokenization pool (a blocking thread when there is none); `None`
    /// when the pool has no room or the text fails to tokenize.
    pub async fn ids_off_path(self) -> Option<Vec<u32>> {
        let (cpu, metrics) = (self.cpu.clone(), Arc::clone(&self.pieces.metrics));
        let job = move || self.ids();
        let out = match cpu {
            Some(pool) => match pool.run(job).await {
                Ok(out) => out,
                Err(super::PoolFull) => {
                    // Only the leading blocks, recorded with the decision, are kept.
                    metrics.tokenize_degraded.with_label_values(&["pool_full"]).inc();
                    return None;
                }
            },
            None => tokio::task::spawn_blocking(job).await.ok()?,
        };
        out.ok()
    }
}

impl LocalTokenizer {
    pub fn new(bytes_per_token: usize, pieces: Option<PieceCache>) -> Self {
        Self { bytes_per_token: bytes_per_token.max(1), pieces, limits: None }
    }

    /// Bounded: tokenization off the async workers on `limits.cpu`, inputs capped.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// `text`, cut to the byte cap at a character boundary (counted when cut).
    fn capped<'t>(&self, text: &'t str) -> &'t str {
        let Some(limits) = &self.limits else { return text };
        if text.len() <= limits.max_bytes {
            return text;
        }
        limits.metrics.tokenize_degraded.with_label_values(&["truncated"]).inc();
        let mut end = limits.max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        &text[..end]
    }

    /// Fails only for a chat whose own (client-supplied) template fails to render; anything else
    /// the configured tokenizer cannot handle is approximated.
    pub fn tokenize_now(&self, model: &Model, req: &InferenceRequest) -> Result<Tokens, TokenizeError> {
        self.tokens(model, req, false).map(|leading| leading.tokens)
    }

    /// [`Self::tokenize_now`], or with `defer`, a prompt whose leading pieces are all cached as
    /// those pieces' ids and the [`Tail`] that tokenizes the rest.
    fn tokens(&self, model: &Model, req: &InferenceRequest, defer: bool) -> Result<Leading, TokenizeError> {
        let whole = |tokens| Ok(Leading { tokens, tail: None });
        match &req.kind {
            Kind::Completion(Prompt::Ids(ids)) => whole(Tokens { ids: ids.clone(), space: TokenSpace::Engine }),
            Kind::Completion(Prompt::IdLists(lists)) => {
                whole(Tokens { ids: lists.first().cloned().unwrap_or_default(), space: TokenSpace::Engine })
            }
            Kind::Completion(Prompt::Text(text)) => Ok(self.text(model, text, defer)),
            Kind::Completion(Prompt::Texts(texts)) => {
                Ok(self.text(model, texts.first().map_or("", String::as_str), defer))
            }
            Kind::Chat(chat) => {
                if let Some(tok) = &model.tokenizer {
                    match self.chat(tok, chat, defer) {
                        Ok((ids, tail)) => {
                            return Ok(Leading {
                                tokens: Tokens { ids, space: TokenSpace::Local(tok.fingerprint()) },
                                tail,
                            })
                        }
                        // The client's own template failed: vLLM would refuse the request too.
                        Err(e) if chat.chat_template.is_some() => return Err(TokenizeError::Rejected(e)),
                        Err(_) => {}
                    }
                }
                whole(self.approx(&chat_bytes(chat)))
            }
            Kind::Other => whole(Tokens { ids: Vec::new(), space: TokenSpace::Approx }),
        }
    }

    /// The chat's tokens as vLLM computes them (template applied, no special tokens added), from
    /// cached pieces where they repeat.
    fn chat(&self, tok: &Arc<HfTokenizer>, chat: &ChatInput, defer: bool) -> Result<(Vec<u32>, Option<Tail>), String> {
        let rendered = tok.render_chat(chat).map_err(|e| e.to_string())?;
        self.encode_leading(tok, self.capped(&rendered), false, defer)
    }

    /// `tok.encode(text, add_special_tokens)`, built from cached pieces when the text has added
    /// tokens to cut at (a rendered chat, or a completion prompt written in the template's own
    /// tokens) and the cut is exact: the same ids, with each piece between added tokens tokenized
    /// once for all requests that repeat it. With `defer`, only the ids up to the first piece the
    /// cache does not hold, and the [`Tail`] that tokenizes the rest (`None` when none is left).
    fn encode_leading(
        &self,
        tok: &Arc<HfTokenizer>,
        text: &str,
        add_special_tokens: bool,
        defer: bool,
    ) -> Result<(Vec<u32>, Option<Tail>), String> {
        let whole = || tok.encode(text, add_special_tokens).map(|ids| (ids, None));
        let Some(pieces) = self.pieces.as_ref().filter(|p| p.cache.enabled()) else {
            return whole();
        };
        let specials = if add_special_tokens { tok.specials_around() } else { Some((&[][..], &[][..])) };
        let Some((before, after)) = specials else { return whole() };
        let cut = tok.pieces(text).filter(|p| p.iter().any(|piece| matches!(piece, Piece::Added(_))));
        let Some(cut) = cut else { return whole() };
        let mut ids = before.to_vec();
        let Some(first_new) = pieces.extend(tok, &cut, &mut ids, defer)? else {
            ids.extend_from_slice(after);
            return Ok((ids, None));
        };
        // Text pieces are slices of `text`; the cut restarts exactly there (a piece starts at the
        // text's start or where an added token ends, and the matcher's next match is the same).
        let at = first_new.as_ptr() as usize - text.as_ptr() as usize;
        let tail = Tail {
            tok: Arc::clone(tok),
            text: text[at..].to_owned(),
            after: after.to_vec(),
            pieces: pieces.clone(),
            cpu: self.limits.as_ref().map(|l| Arc::clone(&l.cpu)),
        };
        Ok((ids, Some(tail)))
    }

    /// The request as the CPU pool needs it: a text prompt cut to the byte cap (counted here, so
    /// `text` sees it within the cap and does not count it again), anything else cloned.
    fn job_input(&self, req: &InferenceRequest) -> InferenceRequest {
        let text = match &req.kind {
            Kind::Completion(Prompt::Text(t)) => t,
            Kind::Completion(Prompt::Texts(ts)) => match ts.first() {
                Some(t) => t,
                None => return req.clone(),
            },
            _ => return req.clone(),
        };
        InferenceRequest {
            model: req.model.clone(),
            kind: Kind::Completion(Prompt::Text(self.capped(text).to_owned())),
            cache_salt: req.cache_salt.clone(),
            stream: req.stream,
        }
    }

    fn text(&self, model: &Model, text: &str, defer: bool) -> Leading {
        let text = self.capped(text);
        if let Some(tok) = &model.tokenizer {
            if let Ok((ids, tail)) = self.encode_leading(tok, text, true, defer) {
                return Leading { tokens: Tokens { ids, space: TokenSpace::Local(tok.fingerprint()) }, tail };
            }
        }
        Leading { tokens: self.approx(text.as_bytes()), tail: None }
    }

    /// The byte approximation of a whole request (no tokenizer, no template), its text capped.
    fn approx_request(&self, req: &InferenceRequest) -> Tokens {
        match &req.kind {
            Kind::Completion(Prompt::Text(t)) => self.approx(self.capped(t).as_bytes()),
            Kind::Completion(Prompt::Texts(t)) => {
                self.approx(self.capped(t.first().map_or("", String::as_str)).as_bytes())
            }
            Kind::Chat(chat) => {
                let mut bytes = chat_bytes(chat);
                if let Some(limits) = &self.limits {
                    bytes.truncate(limits.max_bytes);
                }
                self.approx(&bytes)
            }
            _ => Tokens { ids: Vec::new(), space: TokenSpace::Approx },
        }
    }

    fn approx(&self, bytes: &[u8]) -> Tokens {
        let ids = bytes.chunks(self.bytes_per_token).map(|c| xxhash_rust::xxh3::xxh3_64(c) as u32).collect();
        Tokens { ids, space: TokenSpace::Approx }
    }
}

/// A stable byte form of a chat request: what stays fixed over a conversation (tools, template
/// arguments) first, then each message in order, so earlier turns are a prefix of later ones.
fn chat_bytes(chat: &ChatInput) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(t) = &chat.tools {
        out.extend_from_slice(serde_json::Value::Array(t.clone()).to_string().as_bytes());
        out.push(0);
    }
    if let Some(k) = &chat.chat_template_kwargs {
        out.extend_from_slice(serde_json::Value::Object(k.clone()).to_string().as_bytes());
        out.push(0);
    }
    for m in &chat.messages {
        let role = m.get("role").and_then(|r| r.as_str()).unwrap_or("");
        out.extend_from_slice(role.as_bytes());
        out.push(0);
        match m.get("content") {
            Some(serde_json::Value::String(s)) => out.extend_from_slice(s.as_bytes()),
            Some(other) => out.extend_from_slice(other.to_string().as_bytes()),
            None => {}
        }
        out.push(0);
    }
    out
}

/// Inputs above this many bytes are tokenized on the CPU pool: a long prompt takes milliseconds of
/// CPU that would otherwise stall every stream on the same runtime worker.
const INLINE_BYTES: usize = 32 * 1024;

/// The text a request brings to tokenize or render: every string in it (message contents and
/// other fields, tools, template and its arguments), so no large input is worked on inline.
fn input_bytes(req: &InferenceRequest) -> usize {
    fn strings(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::String(s) => s.len(),
            serde_json::Value::Array(a) => a.iter().map(strings).sum(),
            serde_json::Value::Object(o) => o.iter().map(|(k, v)| k.len() + strings(v)).sum(),
            _ => 8,
        }
    }
    match &req.kind {
        Kind::Completion(Prompt::Text(t)) => t.len(),
        Kind::Completion(Prompt::Texts(t)) => t.first().map_or(0, String::len),
        Kind::Chat(c) => {
            c.messages.iter().map(strings).sum::<usize>()
                + c.tools.iter().flatten().map(strings).sum::<usize>()
                + c.chat_template.as_ref().map_or(0, String::len)
                + c.chat_template_kwargs.as_ref().map_or(0, |k| k.iter().map(|(k, v)| k.len() + strings(v)).sum())
        }
        _ => 0,
    }
}

impl LocalTokenizer {
    /// Short inputs inline; long ones on the CPU pool, already cut to the cap (see `Limits`).
    async fn run(&self, model: &Arc<Model>, req: &InferenceRequest, defer: bool) -> Result<Leading, TokenizeError> {
        let bytes = input_bytes(req);
        if bytes <= INLINE_BYTES {
            return self.tokens(model, req, defer);
        }
        // A long text prompt goes to the pool already cut to the cap: no copy of the whole.
        let (this, model_c, req_c) = (self.clone(), Arc::clone(model), self.job_input(req));
        let job = move || this.tokens(&model_c, &req_c, defer);
        let Some(limits) = &self.limits else {
            return tokio::task::spawn_blocking(job).await.map_err(|e| TokenizeError::Failed(e.to_string()))?;
        };
        let started = std::time::Instant::now();
        let out = limits.cpu.run(job).await;
        limits.metrics.observe_phase(crate::metrics::Phase::TokenizePool, started.elapsed());
        match out {
            Ok(leading) => leading,
            Err(super::PoolFull) => {
                // No room to tokenize: route on the byte form rather than wait or refuse.
                limits.metrics.tokenize_degraded.with_label_values(&["pool_full"]).inc();
                Ok(Leading { tokens: self.approx_request(req), tail: None })
            }
        }
    }
}

impl Tokenize for LocalTokenizer {
    fn tokenize<'a>(
        &'a self,
        model: &'a Arc<Model>,
        req: &'a InferenceRequest,
    ) -> BoxFuture<'a, Result<Tokens, TokenizeError>> {
        Box::pin(async move { self.run(model, req, false).await.map(|leading| leading.tokens) })
    }

    fn tokenize_leading<'a>(
        &'a self,
        model: &'a Arc<Model>,
        req: &'a InferenceRequest,
    ) -> BoxFuture<'a, Result<Leading, TokenizeError>> {
        Box::pin(self.run(model, req, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::{parse, Endpoint};
    use serde_json::json;

    fn model(tokenizer: bool) -> Model {
        let tokenizer =
            tokenizer.then(|| Arc::new(hf_chat::HfTokenizer::from_dir(&crate::test_fixture_dir()).expect("fixture")));
        Model { name: "m".into(), endpoints: vec![], tokenizer }
    }

    fn chat(messages: serde_json::Value) -> InferenceRequest {
        parse(Endpoint::ChatCompletions, json!({"model": "m", "messages": messages}).to_string().as_bytes())
            .expect("parses")
    }

    #[test]
    fn earlier_turns_are_a_token_prefix_of_later_ones() {
        let turn1 = json!([{"role": "user", "content": "Tell me about caches."}]);
        let turn2 = json!([{"role": "user", "content": "Tell me about caches."},
                           {"role": "assistant", "content": "They keep things."},
                           {"role": "user", "content": "More."}]);
        for with_tokenizer in [true, false] {
            let m = model(with_tokenizer);
            let local = LocalTokenizer::new(4, None);
            let a = local.tokenize_now(&m, &chat(turn1.clone())).expect("tokens");
            let b = local.tokenize_now(&m, &chat(turn2.clone())).expect("tokens");
            // Turn 1 ends with the generation prompt (3 tokens), or a partial byte chunk.
            let shared = a.ids.len() - if with_tokenizer { 3 } else { 1 };
            assert_eq!(a.ids[..shared], b.ids[..shared], "tokenizer: {with_tokenizer}");
            assert_eq!(a.space, b.space);
        }
    }

    /// A tokenizer with a piece cache, one without, and the cache and metrics the first uses.
    fn cached_and_whole() -> (LocalTokenizer, LocalTokenizer, Arc<TokenCache>, Arc<Metrics>) {
        let cache = Arc::new(TokenCache::new(1 << 20));
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let cached =
            LocalTokenizer::new(4, Some(PieceCache { cache: Arc::clone(&cache), metrics: Arc::clone(&metrics) }));
        (cached, LocalTokenizer::new(4, None), cache, metrics)
    }

    #[test]
    fn chat_pieces_are_reused_across_turns_and_give_the_same_tokens() {
        let m = model(true);
        let (cached, whole, cache, metrics) = cached_and_whole();
        let system = "You answer questions about caches. ".repeat(100);
        let mut messages = vec![json!({"role": "system", "content": system})];
        let mut first_turn_bytes = 0;
        for turn in 0..4 {
            messages.push(json!({"role": "user", "content": format!("Question {turn}: what is block {turn}?")}));
            let req = chat(json!(messages.clone()));
            let before = cache.bytes();
            let (a, b) =
                (cached.tokenize_now(&m, &req).expect("tokens"), whole.tokenize_now(&m, &req).expect("tokens"));
            assert_eq!(a, b, "turn {turn}: pieces must give exactly the whole text's tokens");
            // Only what a turn adds is tokenized and stored; the system prompt is not again.
            let stored = cache.bytes() - before;
            if turn == 0 {
                first_turn_bytes = stored;
                assert!(a.ids.len() > 500);
            } else {
                assert!(stored * 4 < first_turn_bytes, "turn {turn} stored {stored} bytes, turn 0 {first_turn_bytes}");
            }
            messages.push(json!({"role": "assistant", "content": format!("Answer {turn}.")}));
        }
        // Operators see the reuse: most tokens of turns 1–3 came from cached pieces.
        let count = |r: &str| metrics.piece_tokens.with_label_values(&[r]).get();
        assert!(
            count("reused") > 2 * count("tokenized"),
            "reused {} tokenized {}",
            count("reused"),
            count("tokenized")
        );
    }

    #[test]
    fn leading_tokens_and_their_tail_are_exactly_the_whole_prompt_s_tokens() {
        let m = model(true);
        let (cached, whole, _, _) = cached_and_whole();
        let system = "You answer questions about caches. ".repeat(100);
        let mut messages = vec![json!({"role": "system", "content": system})];
        for turn in 0..4 {
            messages.push(json!({"role": "user", "content": format!("Question {turn}: what is block {turn}?")}));
            let req = chat(json!(messages.clone()));
            let expected = whole.tokenize_now(&m, &req).expect("tokens");
            let Leading { mut tokens, tail } = cached.tokens(&m, &req, true).expect("tokens");
            // The first piece after the opening token is new on the first turn: from it on, the
            // rest is left for later; afterwards, only what each turn adds is.
            let tail = tail.expect("new text is left for later");
            let leading = tokens.ids.len();
            assert!(if turn == 0 { leading == 1 } else { leading > 500 }, "turn {turn}: {leading} leading tokens");
            tokens.ids.extend(tail.ids().expect("tail"));
            assert_eq!(tokens, expected, "turn {turn}: leading + tail must be the whole prompt's tokens");
            messages.push(json!({"role": "assistant", "content": format!("Answer {turn}.")}));
        }
        // Nothing new: the whole prompt comes from the cache at once.
        let req = chat(json!(messages));
        let leading = cached.tokens(&m, &req, true).expect("tokens");
        let _ = cached.tokenize_now(&m, &req);
        let again = cached.tokens(&m, &req, true).expect("tokens");
        assert!(leading.tail.is_some() && again.tail.is_none());
        assert_eq!(again.tokens, whole.tokenize_now(&m, &req).expect("tokens"));
    }

    #[test]
    fn a_completion_prompt_in_template_tokens_reuses_its_pieces_and_gives_the_same_tokens() {
        let m = model(true);
        let (cached, whole, cache, metrics) = cached_and_whole();
        let system = "You answer questions about caches. ".repeat(100);
        let count = |r: &str| metrics.piece_tokens.with_label_values(&[r]).get();
        for n in 0..4 {
            // A client that applied the chat template itself and sends the text to /v1/completions.
            let prompt = format!(
                "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nQuestion {n}?<|im_end|>\n<|im_start|>assistant\n"
            );
            let req = completion(&prompt);
            let (a, b) =
                (cached.tokenize_now(&m, &req).expect("tokens"), whole.tokenize_now(&m, &req).expect("tokens"));
            assert_eq!(a, b, "prompt {n}: pieces must give exactly the whole text's tokens");
        }
        assert!(
            count("reused") > 2 * count("tokenized"),
            "reused {} tokenized {}",
            count("reused"),
            count("tokenized")
        );
        // Plain text has nothing to cut at: tokenized whole, nothing stored as pieces.
        let before = (cache.bytes(), count("tokenized"));
        let plain = completion(&system);
        assert_eq!(cached.tokenize_now(&m, &plain).expect("tokens"), whole.tokenize_now(&m, &plain).expect("tokens"));
        assert_eq!((cache.bytes(), count("tokenized")), before);
    }

    #[test]
    fn token_id_prompts_are_engine_tokens_and_text_uses_the_tokenizer() {
        let m = model(true);
        let local = LocalTokenizer::new(4, None);
        let ids = parse(Endpoint::Completions, br#"{"model":"m","prompt":[9707,1879]}"#).expect("parses");
        assert_eq!(
            local.tokenize_now(&m, &ids).expect("tokens"),
            Tokens { ids: vec![9707, 1879], space: TokenSpace::Engine }
        );
        let text = parse(Endpoint::Completions, br#"{"model":"m","prompt":"Hello world"}"#).expect("parses");
        let t = local.tokenize_now(&m, &text).expect("tokens");
        assert_eq!(t.ids, vec![9707, 1879]);
        assert!(matches!(t.space, TokenSpace::Local(_)));
        assert_eq!(local.tokenize_now(&model(false), &text).expect("tokens").space, TokenSpace::Approx);
    }

    /// Takes the pool's one worker until the sender is used or dropped.
    async fn occupy(
        cpu: &Arc<CpuPool>,
    ) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<Result<bool, super::super::PoolFull>>) {
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let cpu = Arc::clone(cpu);
        let busy = tokio::spawn(async move { cpu.run(move || release_rx.recv().is_ok()).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        (release_tx, busy)
    }

    /// One worker, no queue, a 64 KiB cap.
    fn limited() -> (LocalTokenizer, Arc<Metrics>, Arc<CpuPool>) {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let cpu = Arc::new(CpuPool::new(1, 0));
        let local = LocalTokenizer::new(4, None).with_limits(Limits {
            cpu: Arc::clone(&cpu),
            max_bytes: 64 * 1024,
            metrics: Arc::clone(&metrics),
        });
        (local, metrics, cpu)
    }

    fn completion(text: &str) -> InferenceRequest {
        parse(Endpoint::Completions, json!({"model": "m", "prompt": text}).to_string().as_bytes()).expect("parses")
    }

    #[tokio::test]
    async fn a_prompt_over_the_cap_is_routed_on_its_leading_part() {
        let (local, metrics, _) = limited();
        let m = Arc::new(model(true));
        let long = "The quick brown fox jumps over the lazy dog. ".repeat(4000); // ~180 KB
        let tokens = local.tokenize(&m, &completion(&long)).await.expect("tokens");
        let tok = m.tokenizer.as_ref().expect("tokenizer");
        let lead = tok.encode(&long[..64 * 1024], true).expect("encodes");
        assert_eq!(tokens.ids, lead, "the tokens of the first 64 KiB");
        assert!(matches!(tokens.space, TokenSpace::Local(_)));
        assert_eq!(metrics.tokenize_degraded.with_label_values(&["truncated"]).get(), 1);
    }

    #[tokio::test]
    async fn a_full_pool_routes_on_the_approximation_instead_of_waiting() {
        let (local, metrics, cpu) = limited();
        let m = Arc::new(model(true));
        let (release_tx, busy) = occupy(&cpu).await;
        let long = "x".repeat(100_000);
        let tokens = local.tokenize(&m, &completion(&long)).await.expect("tokens");
        assert_eq!(tokens.space, TokenSpace::Approx);
        assert_eq!(metrics.tokenize_degraded.with_label_values(&["pool_full"]).get(), 1);
        // Small inputs never wait for the pool.
        let short = local.tokenize(&m, &completion("Hello world")).await.expect("tokens");
        assert_eq!(short.ids, vec![9707, 1879]);
        release_tx.send(()).expect("release");
        assert_eq!(busy.await.expect("joined"), Ok(true));
    }

    #[tokio::test]
    async fn large_tools_are_worked_on_off_the_async_workers() {
        let (local, metrics, cpu) = limited();
        let m = Arc::new(model(true));
        let (release_tx, busy) = occupy(&cpu).await;
        let tools = json!([{"type": "function", "function": {"name": "f", "description": "d".repeat(100_000), "parameters": {}}}]);
        let req = parse(
            Endpoint::ChatCompletions,
            json!({"model": "m", "messages": [{"role": "user"}], "tools": tools}).to_string().as_bytes(),
        )
        .expect("parses");
        let tokens = local.tokenize(&m, &req).await.expect("tokens");
        assert_eq!(tokens.space, TokenSpace::Approx, "went to the (full) pool, not inline");
        assert_eq!(metrics.tokenize_degraded.with_label_values(&["pool_full"]).get(), 1);
        release_tx.send(()).expect("release");
        let _ = busy.await;
    }
}
