//! Local tokenization: the model's configured HF tokenizer (chat template applied), else a byte
//! approximation that keeps prefix affinity — equal leading text gives equal leading "tokens".
//!
//! A rendered chat is tokenized piece by piece between the template's added tokens, exactly as
//! `tokenizers` does it (see [`HfTokenizer::pieces`]), and each piece's ids are kept in the token
//! cache: a conversation's system prompt and earlier turns are tokenized once, not every turn.

use super::{TokenCache, TokenSpace, Tokenize, TokenizeError, Tokens};
use crate::discovery::Model;
use crate::metrics::Metrics;
use crate::openai::{InferenceRequest, Kind, Prompt};
use futures::future::BoxFuture;
use hf_chat::{ChatInput, HfTokenizer, Piece};
use std::sync::Arc;

#[derive(Clone)]
pub struct LocalTokenizer {
    bytes_per_token: usize,
    /// Where chat pieces' ids are kept (`None`: every chat is tokenized whole).
    pieces: Option<PieceCache>,
}

/// The cache chat pieces' ids are kept in, and the counter of tokens reused from it.
#[derive(Clone)]
pub struct PieceCache {
    pub cache: Arc<TokenCache>,
    pub metrics: Arc<Metrics>,
}

impl LocalTokenizer {
    pub fn new(bytes_per_token: usize, pieces: Option<PieceCache>) -> Self {
        Self { bytes_per_token: bytes_per_token.max(1), pieces }
    }

    /// Fails only for a chat whose own (client-supplied) template fails to render; anything else
    /// the configured tokenizer cannot handle is approximated.
    pub fn tokenize_now(&self, model: &Model, req: &InferenceRequest) -> Result<Tokens, TokenizeError> {
        Ok(match &req.kind {
            Kind::Completion(Prompt::Ids(ids)) => Tokens { ids: ids.clone(), space: TokenSpace::Engine },
            Kind::Completion(Prompt::IdLists(lists)) => {
                Tokens { ids: lists.first().cloned().unwrap_or_default(), space: TokenSpace::Engine }
            }
            Kind::Completion(Prompt::Text(text)) => self.text(model, text),
            Kind::Completion(Prompt::Texts(texts)) => self.text(model, texts.first().map_or("", String::as_str)),
            Kind::Chat(chat) => {
                if let Some(tok) = &model.tokenizer {
                    match self.chat(tok, chat) {
                        Ok(ids) => return Ok(Tokens { ids, space: TokenSpace::Local(tok.fingerprint()) }),
                        // The client's own template failed: vLLM would refuse the request too.
                        Err(e) if chat.chat_template.is_some() => return Err(TokenizeError::Rejected(e)),
                        Err(_) => {}
                    }
                }
                self.approx(&chat_bytes(chat))
            }
            Kind::Other => Tokens { ids: Vec::new(), space: TokenSpace::Approx },
        })
    }

    /// The chat's tokens as vLLM computes them (template applied, no special tokens added), from
    /// cached pieces where they repeat.
    fn chat(&self, tok: &HfTokenizer, chat: &ChatInput) -> Result<Vec<u32>, String> {
        let text = tok.render_chat(chat).map_err(|e| e.to_string())?;
        let pieces_cache = self.pieces.as_ref().filter(|p| p.cache.enabled());
        let (Some(PieceCache { cache, metrics }), Some(pieces)) = (pieces_cache, tok.pieces(&text)) else {
            return tok.encode(&text, false);
        };
        let space = TokenSpace::Local(tok.fingerprint());
        let tokenizer_key = format!("{:016x}", tok.fingerprint());
        let (mut ids, mut reused) = (Vec::new(), 0);
        for piece in pieces {
            match piece {
                Piece::Added(id) => ids.push(id),
                Piece::Text(t) => {
                    let key = TokenCache::key("piece", &tokenizer_key, t.as_bytes());
                    if let Some((_, cached)) = cache.get(key) {
                        ids.extend_from_slice(&cached);
                        reused += cached.len();
                    } else {
                        let piece_ids = tok.encode(t, false)?;
                        ids.extend_from_slice(&piece_ids);
                        cache.insert(key, (space, Arc::from(piece_ids)));
                    }
                }
            }
        }
        metrics.piece_tokens.with_label_values(&["reused"]).inc_by(reused as u64);
        metrics.piece_tokens.with_label_values(&["tokenized"]).inc_by((ids.len() - reused) as u64);
        Ok(ids)
    }

    fn text(&self, model: &Model, text: &str) -> Tokens {
        if let Some(tok) = &model.tokenizer {
            if let Ok(ids) = tok.encode(text, true) {
                return Tokens { ids, space: TokenSpace::Local(tok.fingerprint()) };
            }
        }
        self.approx(text.as_bytes())
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

/// Inputs above this many bytes are tokenized on the blocking pool: a long prompt takes
/// milliseconds of CPU that would otherwise stall every stream on the same runtime worker.
const INLINE_BYTES: usize = 32 * 1024;

fn text_bytes(req: &InferenceRequest) -> usize {
    match &req.kind {
        Kind::Completion(Prompt::Text(t)) => t.len(),
        Kind::Completion(Prompt::Texts(t)) => t.first().map_or(0, String::len),
        Kind::Chat(c) => c.messages.iter().map(|m| m.get("content").map_or(0, |c| c.to_string().len())).sum(),
        _ => 0,
    }
}

impl Tokenize for LocalTokenizer {
    fn tokenize<'a>(
        &'a self,
        model: &'a Arc<Model>,
        req: &'a InferenceRequest,
    ) -> BoxFuture<'a, Result<Tokens, TokenizeError>> {
        Box::pin(async move {
            if text_bytes(req) <= INLINE_BYTES {
                return self.tokenize_now(model, req);
            }
            let (this, model, req) = (self.clone(), Arc::clone(model), req.clone());
            tokio::task::spawn_blocking(move || this.tokenize_now(&model, &req))
                .await
                .map_err(|e| TokenizeError::Failed(e.to_string()))?
        })
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

    #[test]
    fn chat_pieces_are_reused_across_turns_and_give_the_same_tokens() {
        let m = model(true);
        let cache = Arc::new(TokenCache::new(1 << 20));
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let cached =
            LocalTokenizer::new(4, Some(PieceCache { cache: Arc::clone(&cache), metrics: Arc::clone(&metrics) }));
        let whole = LocalTokenizer::new(4, None);
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
}
