//! A HuggingFace tokenizer directory, used the way vLLM uses it: `tokenizer.json` through the
//! `tokenizers` crate and the Jinja chat template from `tokenizer_config.json` (or
//! `chat_template.jinja`), rendered as transformers renders it.
//!
//! Shared by `vllm-sim` (which must tokenize as vLLM does) and the router's local tokenizer.

mod chat;
pub mod pyjson;

pub use chat::{ChatError, ChatInput, TEMPLATE_FUEL};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("tokenizer directory {0}: no tokenizer.json there")]
    Missing(PathBuf),
    #[error("tokenizer {path}: {message}")]
    Broken { path: PathBuf, message: String },
}

/// A loaded tokenizer plus the chat template and special tokens a template may refer to.
pub struct HfTokenizer {
    tokenizer: Tokenizer,
    chat: chat::ChatTemplate,
    /// Stable identity of this tokenizer (hash of its files), so token ids from different
    /// tokenizers never share a hash space.
    fingerprint: u64,
    /// Ids below this are valid, added tokens included. Counted once: `get_vocab_size(true)`
    /// builds the whole vocabulary map on every call (~150k entries for Qwen3).
    vocab_size: usize,
    /// How `tokenizers` cuts a text at added tokens before tokenizing each piece on its own;
    /// `None` when this tokenizer's added tokens make that cut depend on their surroundings.
    added: Option<AddedSplit>,
    /// What `encode(text, true)` puts before and after `encode(text, false)` (the post-processor's
    /// special tokens, e.g. a BOS), when that is the same for every text.
    specials: Option<(Vec<u32>, Vec<u32>)>,
}

/// A piece of a text as `tokenizers` sees it: text between added tokens, or an added token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'t> {
    Text(&'t str),
    Added(u32),
}

/// The first split `tokenizers` makes (its `AddedVocabulary`): every added token whose content
/// is matched before normalization, found leftmost-longest in the raw text.
struct AddedSplit {
    matcher: AhoCorasick,
    ids: Vec<u32>,
}

impl AddedSplit {
    /// `None` unless the split is exact: a token that strips whitespace or must stand alone as a
    /// word takes its neighbours into account, a tokenizer told to encode special tokens as text
    /// does not split on them at all, and a Metaspace step with `prepend_scheme: first` (Llama,
    /// Mistral) marks only the text's first segment, which a piece tokenized alone cannot know.
    fn of(tokenizer: &Tokenizer, json: &serde_json::Value) -> Option<Self> {
        if tokenizer.get_encode_special_tokens() || prepends_first(json) {
            return None;
        }
        let mut tokens: Vec<_> =
            tokenizer.get_added_tokens_decoder().into_iter().filter(|(_, t)| !t.normalized).collect();
        if tokens.is_empty() || tokens.iter().any(|(_, t)| t.lstrip || t.rstrip || t.single_word) {
            return None;
        }
        tokens.sort_by_key(|(id, _)| *id);
        let matcher = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(tokens.iter().map(|(_, t)| &t.content))
            .ok()?;
        Some(Self { matcher, ids: tokens.into_iter().map(|(id, _)| id).collect() })
    }
}

/// The special tokens `encode(text, true)` adds around `encode(text, false)`, found by encoding
/// probes both ways; `None` unless they are the same around every probe, and never with
/// truncation or padding configured (those change the ids with the text's length).
fn specials_of(tokenizer: &Tokenizer) -> Option<(Vec<u32>, Vec<u32>)> {
    if tokenizer.get_truncation().is_some() || tokenizer.get_padding().is_some() {
        return None;
    }
    let mut found: Option<(Vec<u32>, Vec<u32>)> = None;
    for probe in ["x", "Hello world, again.\n", " two  spaces"] {
        let with = tokenizer.encode_fast(probe, true).ok()?.get_ids().to_vec();
        let without = tokenizer.encode_fast(probe, false).ok()?.get_ids().to_vec();
        let at = (0..=with.len().checked_sub(without.len())?).find(|&i| with[i..i + without.len()] == without[..])?;
        let around = (with[..at].to_vec(), with[at + without.len()..].to_vec());
        match &found {
            Some(seen) if *seen != around => return None,
            _ => found = Some(around),
        }
    }
    found
}

/// Whether any step of the tokenizer is a Metaspace that prepends only to the first segment.
fn prepends_first(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(o) => {
            let metaspace_first = o.get("type").and_then(serde_json::Value::as_str) == Some("Metaspace")
                && o.get("prepend_scheme").and_then(serde_json::Value::as_str) == Some("first");
            metaspace_first || o.values().any(prepends_first)
        }
        serde_json::Value::Array(a) => a.iter().any(prepends_first),
        _ => false,
    }
}

impl HfTokenizer {
    pub fn from_dir(dir: &Path) -> Result<Self, LoadError> {
        let json_path = dir.join("tokenizer.json");
        if !json_path.is_file() {
            return Err(LoadError::Missing(dir.to_path_buf()));
        }
        let broken = |path: &Path, message: String| LoadError::Broken { path: path.to_path_buf(), message };
        let json_bytes = std::fs::read(&json_path).map_err(|e| broken(&json_path, e.to_string()))?;
        let tokenizer = Tokenizer::from_bytes(&json_bytes).map_err(|e| broken(&json_path, e.to_string()))?;

        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read(&config_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| broken(&config_path, e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
            Err(e) => return Err(broken(&config_path, e.to_string())),
        };
        let jinja_path = dir.join("chat_template.jinja");
        let file_template = match std::fs::read_to_string(&jinja_path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(broken(&jinja_path, e.to_string())),
        };
        let chat = chat::ChatTemplate::from_config(&config, file_template).map_err(|e| broken(&config_path, e))?;
        let fingerprint =
            xxhash_rust::xxh3::xxh3_64(&json_bytes) ^ xxhash_rust::xxh3::xxh3_64(config.to_string().as_bytes());
        let vocab_size = tokenizer.get_vocab_size(true);
        let steps: serde_json::Value = serde_json::from_slice(&json_bytes).unwrap_or_default();
        let steps = serde_json::json!([steps.get("normalizer"), steps.get("pre_tokenizer")]);
        let added = AddedSplit::of(&tokenizer, &steps);
        let specials = specials_of(&tokenizer);
        Ok(Self { tokenizer, chat, fingerprint, vocab_size, added, specials })
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        self.tokenizer
            .encode_fast(text, add_special_tokens)
            .map(|enc| enc.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }

    /// `text` cut where `tokenizers` cuts it before tokenizing: `encode(text, false)` equals the
    /// pieces' ids in order, each `Text` piece encoded on its own with `encode(piece, false)`.
    /// So pieces that repeat — a chat's system prompt and earlier turns, between the template's
    /// special tokens — can be tokenized once. `None` when this tokenizer's cut is not exact.
    pub fn pieces<'t>(&self, text: &'t str) -> Option<Vec<Piece<'t>>> {
        let split = self.added.as_ref()?;
        let mut pieces = Vec::new();
        let mut at = 0;
        for m in split.matcher.find_iter(text) {
            if m.start() > at {
                pieces.push(Piece::Text(&text[at..m.start()]));
            }
            pieces.push(Piece::Added(split.ids[m.pattern().as_usize()]));
            at = m.end();
        }
        if at < text.len() {
            pieces.push(Piece::Text(&text[at..]));
        }
        Some(pieces)
    }

    /// The special tokens `encode(text, true)` adds before and after `encode(text, false)`, the
    /// same for every text; `None` when this tokenizer's additions are not that simple.
    pub fn specials_around(&self) -> Option<(&[u32], &[u32])> {
        self.specials.as_ref().map(|(before, after)| (before.as_slice(), after.as_slice()))
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.tokenizer.decode(ids, false).map_err(|e| e.to_string())
    }

    pub fn token_strs(&self, ids: &[u32]) -> Vec<Option<String>> {
        ids.iter().map(|&id| self.tokenizer.id_to_token(id)).collect()
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Renders a chat request to the prompt text vLLM would tokenize.
    pub fn render_chat(&self, input: &ChatInput) -> Result<String, ChatError> {
        self.chat.render(input)
    }

    /// Renders and tokenizes a chat request (`add_special_tokens` defaults to false for chat in vLLM).
    pub fn encode_chat(&self, input: &ChatInput, add_special_tokens: bool) -> Result<Vec<u32>, ChatError> {
        let text = self.render_chat(input)?;
        self.encode(&text, add_special_tokens).map_err(ChatError::Tokenize)
    }
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

/// The Qwen3 tokenizer shipped beside the repository for tests and the demo.
#[cfg(test)]
pub(crate) fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/qwen3")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(v: serde_json::Value) -> ChatInput {
        ChatInput::from_request(v.as_object().expect("object")).expect("valid chat input")
    }

    #[test]
    fn a_hostile_template_runs_out_of_budget_and_a_large_real_chat_does_not() {
        let tok = HfTokenizer::from_dir(&fixture_dir()).expect("fixture loads");
        for hostile in [
            "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}",
            "{{ 'x' * 1000000000 }}",
            "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}",
        ] {
            let input = chat(json!({"messages": [{"role": "user", "content": "hi"}], "chat_template": hostile}));
            let started = std::time::Instant::now();
            let err = tok.render_chat(&input).expect_err("refused");
            let took = started.elapsed();
            assert!(matches!(err, ChatError::TooCostly | ChatError::Template(_)), "{err}");
            eprintln!("hostile template stopped after {took:?}: {err}");
        }
        // The operator's template on a 4,096-message, ~1 MiB conversation renders within budget.
        let messages: Vec<serde_json::Value> = (0..4096)
            .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": "word ".repeat(50)}))
            .collect();
        let rendered = tok.render_chat(&chat(json!({"messages": messages}))).expect("within budget");
        assert!(rendered.len() > 1_000_000);
    }

    #[test]
    fn a_metaspace_that_prepends_to_the_first_segment_only_is_tokenized_whole() {
        let qwen = HfTokenizer::from_dir(&fixture_dir()).expect("fixture loads");
        assert!(qwen.pieces("<|im_start|>user\nhi<|im_end|>").is_some());
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture_dir().join("tokenizer.json")).expect("read")).expect("json");
        json["pre_tokenizer"] =
            json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": true});
        let dir = std::env::temp_dir().join(format!("hf-chat-metaspace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("tokenizer.json"), json.to_string()).expect("write");
        let llama_like = HfTokenizer::from_dir(&dir).expect("loads");
        let text = "<|im_start|>user\nhi there<|im_end|>";
        assert!(llama_like.pieces(text).is_none(), "pieces would each get the first-segment prefix");
        // A piece tokenized alone starts a text, so it would get the prefix the whole text gives only
        // its first segment: the whole text is tokenized as one.
        assert!(llama_like.encode(text, false).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_special_tokens_a_post_processor_adds_are_found_and_only_when_fixed() {
        let qwen = HfTokenizer::from_dir(&fixture_dir()).expect("fixture loads");
        assert_eq!(qwen.specials_around(), Some((&[][..], &[][..])), "Qwen3 adds none");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture_dir().join("tokenizer.json")).expect("read")).expect("json");
        // A BOS and an EOS around every text, as Llama-style TemplateProcessing adds them.
        json["post_processor"] = json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {
                "<|endoftext|>": {"id": "<|endoftext|>", "ids": [151643], "tokens": ["<|endoftext|>"]},
                "<|im_end|>": {"id": "<|im_end|>", "ids": [151645], "tokens": ["<|im_end|>"]}
            }
        });
        let load = |json: &serde_json::Value, name: &str| {
            let dir = std::env::temp_dir().join(format!("hf-chat-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("dir");
            std::fs::write(dir.join("tokenizer.json"), json.to_string()).expect("write");
            let tok = HfTokenizer::from_dir(&dir).expect("loads");
            let _ = std::fs::remove_dir_all(&dir);
            tok
        };
        let wrapped = load(&json, "template");
        assert_eq!(wrapped.specials_around(), Some((&[151643][..], &[151645][..])));
        for text in ["", "Hello", "<|im_start|>user\nhi<|im_end|>\n", "  spaced  out  "] {
            let mut expected = vec![151643];
            expected.extend(wrapped.encode(text, false).expect("encodes"));
            expected.push(151645);
            assert_eq!(wrapped.encode(text, true).expect("encodes"), expected, "{text:?}");
        }
        // Truncation makes the ids depend on the text's length: no fixed additions to rely on.
        json["truncation"] = json!({"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0});
        assert_eq!(load(&json, "truncated").specials_around(), None);
    }

    #[test]
    fn renders_qwen3_chatml_with_thinking_off() {
        let tok = HfTokenizer::from_dir(&fixture_dir()).expect("fixture loads");
        let input = chat(json!({
            "messages": [{"role": "system", "content": "You are helpful."},
                         {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}],
            "chat_template_kwargs": {"enable_thinking": false}
        }));
        assert_eq!(
            tok.render_chat(&input).expect("renders"),
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi\nthere<|im_end|>\n\
             <|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
    }

    #[test]
    fn tools_render_as_python_json_in_vllm_field_order() {
        let tok = HfTokenizer::from_dir(&fixture_dir()).expect("fixture loads");
        let input = chat(json!({
            "messages": [{"role": "user", "content": "weather?"}],
            "tools": [{"function": {"parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                                    "name": "get_weather"}, "type": "function"}],
            "add_generation_prompt": false
        }));
        let text = tok.render_chat(&input).expect("renders");
        assert!(
            text.contains(
                "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": null, \
             \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}}}}\n</tools>"
            ),
            "{text}"
        );
        assert!(text.ends_with("<|im_start|>user\nweather?<|im_end|>\n"), "{text}");
    }

    #[test]
    fn continue_final_message_stops_after_its_content() {
        let tok = HfTokenizer::from_dir(&fixture_dir()).expect("fixture loads");
        let input = chat(json!({
            "messages": [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "1, 2,"}],
            "add_generation_prompt": false, "continue_final_message": true
        }));
        assert_eq!(
            tok.render_chat(&input).expect("renders"),
            "<|im_start|>user\nCount<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n1, 2,"
        );
        let both = json!({"messages": [], "continue_final_message": true});
        assert!(ChatInput::from_request(both.as_object().expect("object")).is_err());
    }

    #[test]
    fn special_tokens_are_single_ids_and_decode_round_trips() {
        let tok = HfTokenizer::from_dir(&fixture_dir()).expect("fixture loads");
        let ids = tok.encode("<|im_start|>user\nhello world<|im_end|>", false).expect("encodes");
        assert_eq!(tok.token_strs(&ids[..1]), vec![Some("<|im_start|>".to_owned())]);
        assert_eq!(tok.decode(&ids).expect("decodes"), "<|im_start|>user\nhello world<|im_end|>");
    }

    fn encode_by_pieces(tok: &HfTokenizer, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for piece in tok.pieces(text).expect("Qwen3's added tokens split exactly") {
            match piece {
                Piece::Added(id) => ids.push(id),
                Piece::Text(t) => ids.extend(tok.encode(t, false).expect("encodes")),
            }
        }
        ids
    }

    #[test]
    fn pieces_tokenize_to_exactly_the_whole_text_s_tokens() {
        let tok = HfTokenizer::from_dir(&fixture_dir()).expect("fixture loads");
        let mut texts: Vec<String> = [
            "",
            "plain text, no added token",
            "<|im_start|>",
            "<|im_start|><|im_end|>",
            "  <|im_start|>  user \n\n<|im_end|>\n\n",
            "a<think>b</think>c<tool_call>{\"x\": 1}</tool_call>",
            "<|im_start|user (almost a token) <|im_end|",
            "Ünïcödé 日本語 emoji 🦀<|im_end|>🦀\r\n\t <|endoftext|>",
            "<<|im_start|>>",
        ]
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
        let chats = [
            json!({"messages": [{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "Say <|im_end|> literally, then stop."},
                                {"role": "assistant", "content": "<think>\nhm\n</think>\n\nDone."},
                                {"role": "user", "content": "  again  "}]}),
            json!({"messages": [{"role": "user", "content": "weather in Paris?"}],
                   "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Now.",
                              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
                   "chat_template_kwargs": {"enable_thinking": false}}),
        ];
        for c in chats {
            texts.push(tok.render_chat(&chat(c)).expect("renders"));
        }
        for text in &texts {
            assert_eq!(encode_by_pieces(&tok, text), tok.encode(text, false).expect("encodes"), "{text:?}");
        }
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let err = HfTokenizer::from_dir(Path::new("/nonexistent/tok")).expect_err("must fail");
        assert!(err.to_string().contains("no tokenizer.json"), "{err}");
    }
}
