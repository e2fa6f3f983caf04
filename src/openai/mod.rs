//! OpenAI-style request bodies → what routing needs: model, prompt in its original form, and
//! what separates cache blocks (`cache_salt`). The body itself is passed on untouched.

mod token_ids;

use hf_chat::ChatInput;
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    /// A batch: routed on its first prompt, which leads the batch's KV blocks.
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Completion(Prompt),
    Chat(ChatInput),
    /// Another path with a `model`: routed on load alone.
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InferenceRequest {
    pub model: String,
    pub kind: Kind,
    pub cache_salt: Option<String>,
    pub stream: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("We could not parse the JSON body of your request: {0}")]
    InvalidJson(String),
    #[error("The request body must be a JSON object.")]
    NotAnObject,
    #[error("you must provide a model parameter")]
    MissingModel,
    #[error("{0}")]
    Invalid(String),
}

/// Which OpenAI endpoint a path names (query string ignored).
pub fn endpoint_of(path: &str) -> Endpoint {
    let path = path.split('?').next().unwrap_or(path);
    match path.trim_end_matches('/') {
        "/v1/completions" => Endpoint::Completions,
        "/v1/chat/completions" => Endpoint::ChatCompletions,
        _ => Endpoint::Other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    ChatCompletions,
    Other,
}

/// The fields routing reads. Everything else is skipped without being built, and `prompt` is
/// read in one pass into its own shape (a `Value` tree of 8k token ids costs ~100 µs).
#[derive(serde::Deserialize)]
struct Body {
    model: Option<Value>,
    prompt: Option<PromptField>,
    messages: Option<Value>,
    tools: Option<Value>,
    add_generation_prompt: Option<Value>,
    continue_final_message: Option<Value>,
    chat_template: Option<Value>,
    chat_template_kwargs: Option<Value>,
    cache_salt: Option<Value>,
    stream: Option<Value>,
}

pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<InferenceRequest, ParseError> {
    if endpoint == Endpoint::Completions {
        // Token ids are read apart from the rest (≈ 4× faster than through serde); when the rest
        // is refused, the whole body is parsed again so the error is the ordinary one, position
        // included.
        if let Some(split) = token_ids::split(body) {
            if let Ok(req) = parse_with(endpoint, &split.rest, Some(split.ids)) {
                return Ok(req);
            }
        }
    }
    parse_with(endpoint, body, None)
}

/// The ordinary parse: every field through serde. `parse` gives the same answer for every body
/// (checked by a property test and the `body_parser` fuzz target).
#[doc(hidden)]
pub fn parse_ordinary(endpoint: Endpoint, body: &[u8]) -> Result<InferenceRequest, ParseError> {
    parse_with(endpoint, body, None)
}

/// `ids`: the prompt's token ids, read apart; the body's `prompt` is then `null`.
fn parse_with(endpoint: Endpoint, body: &[u8], ids: Option<Vec<u32>>) -> Result<InferenceRequest, ParseError> {
    use serde_json::error::Category;
    let b: Body = serde_json::from_slice(body).map_err(|e| match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ParseError::InvalidJson(e.to_string()),
        _ if body.trim_ascii_start().first() != Some(&b'{') => ParseError::NotAnObject,
        // A well-formed object whose fields have the wrong shape (e.g. a bad prompt).
        _ => ParseError::Invalid(e.to_string()),
    })?;
    let model = match b.model {
        Some(Value::String(m)) if !m.is_empty() => m,
        Some(Value::String(_) | Value::Null) | None => return Err(ParseError::MissingModel),
        Some(_) => return Err(ParseError::Invalid("'model' must be a string".into())),
    };
    let cache_salt = match b.cache_salt {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(_) => return Err(ParseError::Invalid("'cache_salt' must be a non-empty string".into())),
    };
    let stream = match b.stream {
        None | Some(Value::Null) => false,
        Some(Value::Bool(v)) => v,
        Some(_) => return Err(ParseError::Invalid("'stream' must be a boolean".into())),
    };
    let kind = match endpoint {
        Endpoint::Completions => {
            let field = match ids {
                Some(ids) => Some(PromptField(Some(Prompt::Ids(ids)))),
                None => b.prompt,
            };
            Kind::Completion(prompt(field)?)
        }
        Endpoint::ChatCompletions => {
            let mut obj = Map::new();
            let fields = [
                ("messages", b.messages),
                ("tools", b.tools),
                ("add_generation_prompt", b.add_generation_prompt),
                ("continue_final_message", b.continue_final_message),
                ("chat_template", b.chat_template),
                ("chat_template_kwargs", b.chat_template_kwargs),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    obj.insert(k.to_owned(), v);
                }
            }
            Kind::Chat(chat(&obj)?)
        }
        Endpoint::Other => Kind::Other,
    };
    Ok(InferenceRequest { model, kind, cache_salt, stream })
}

fn prompt(field: Option<PromptField>) -> Result<Prompt, ParseError> {
    let empty = || ParseError::Invalid("'prompt' must not be empty".into());
    match field.and_then(|f| f.0) {
        None => Err(ParseError::Invalid("'prompt' is required".into())),
        Some(Prompt::Text(t)) if t.is_empty() => Err(empty()),
        Some(Prompt::Texts(t)) if t.is_empty() || t.iter().any(String::is_empty) => Err(empty()),
        Some(Prompt::IdLists(l)) if l.iter().any(Vec::is_empty) => Err(empty()),
        Some(Prompt::Ids(ids)) if ids.is_empty() => Err(empty()),
        Some(p) => Ok(p),
    }
}

/// `prompt` in any of its four shapes (`None` for JSON null), read in one pass.
struct PromptField(Option<Prompt>);

const SHAPE: &str = "'prompt' must be a string, a list of strings, token ids or lists of token ids";
const IDS: &str = "token ids must be non-negative 32-bit integers";

impl<'de> serde::Deserialize<'de> for PromptField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PromptVisitor)
    }
}

struct PromptVisitor;

impl<'de> serde::de::Visitor<'de> for PromptVisitor {
    type Value = PromptField;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(SHAPE)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<PromptField, E> {
        Ok(PromptField(None))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PromptField, E> {
        Ok(PromptField(Some(Prompt::Text(v.to_owned()))))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<PromptField, E> {
        Ok(PromptField(Some(Prompt::Text(v))))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<PromptField, A::Error> {
        use serde::de::Error;
        let prompt = match seq.next_element::<Element>()? {
            None => Prompt::Texts(Vec::new()),
            Some(Element::Id(first)) => {
                let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(1024) + 1);
                ids.push(first);
                // The hot loop of long prompts: straight to u32, no per-element dispatch.
                while let Some(id) = seq.next_element::<u32>().map_err(|_| A::Error::custom(IDS))? {
                    ids.push(id);
                }
                Prompt::Ids(ids)
            }
            Some(Element::Text(first)) => {
                let mut texts = vec![first];
                while let Some(t) = seq.next_element::<Element>()? {
                    let Element::Text(t) = t else {
                        return Err(A::Error::custom("'prompt' mixes strings and other values"));
                    };
                    texts.push(t);
                }
                Prompt::Texts(texts)
            }
            Some(Element::Ids(first)) => {
                let mut lists = vec![first];
                while let Some(l) = seq.next_element::<Element>()? {
                    let Element::Ids(l) = l else {
                        return Err(A::Error::custom("'prompt' mixes lists and other values"));
                    };
                    lists.push(l);
                }
                Prompt::IdLists(lists)
            }
        };
        Ok(PromptField(Some(prompt)))
    }
}

/// One element of a `prompt` list.
enum Element {
    Id(u32),
    Text(String),
    Ids(Vec<u32>),
}

impl<'de> serde::Deserialize<'de> for Element {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Element;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(SHAPE)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Element, E> {
                u32::try_from(v).map(Element::Id).map_err(|_| E::custom(IDS))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Element, E> {
                u32::try_from(v).map(Element::Id).map_err(|_| E::custom(IDS))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Element, E> {
                Err(E::custom(IDS))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Element, E> {
                Ok(Element::Text(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Element, A::Error> {
                let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(256));
                while let Some(id) = seq.next_element::<u32>().map_err(|_| serde::de::Error::custom(IDS))? {
                    ids.push(id);
                }
                Ok(Element::Ids(ids))
            }
        }
        d.deserialize_any(V)
    }
}

fn chat(obj: &Map<String, Value>) -> Result<ChatInput, ParseError> {
    let input = ChatInput::from_request(obj).map_err(|e| ParseError::Invalid(e.to_string()))?;
    if input.messages.is_empty() {
        return Err(ParseError::Invalid("'messages' must not be empty".into()));
    }
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(endpoint: Endpoint, v: Value) -> Result<InferenceRequest, ParseError> {
        parse(endpoint, v.to_string().as_bytes())
    }

    #[test]
    fn completion_prompts_in_every_form() {
        let cases = [
            (json!("hi"), Prompt::Text("hi".into())),
            (json!(["a", "b"]), Prompt::Texts(vec!["a".into(), "b".into()])),
            (json!([1, 2]), Prompt::Ids(vec![1, 2])),
            (json!([[1], [2, 3]]), Prompt::IdLists(vec![vec![1], vec![2, 3]])),
        ];
        for (prompt, want) in cases {
            let req = p(Endpoint::Completions, json!({"model": "m", "prompt": prompt})).expect("parses");
            assert_eq!(req.kind, Kind::Completion(want));
        }
    }

    #[test]
    fn chat_fields_and_salt() {
        let req = p(
            Endpoint::ChatCompletions,
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "cache_salt": "u1", "stream": true,
                   "chat_template_kwargs": {"enable_thinking": false}}),
        )
        .expect("parses");
        assert_eq!(req.cache_salt.as_deref(), Some("u1"));
        assert!(req.stream);
        let Kind::Chat(chat) = req.kind else { panic!("chat") };
        assert!(chat.add_generation_prompt);
        assert_eq!(chat.chat_template_kwargs.map(|k| k.len()), Some(1));
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        assert!(matches!(parse(Endpoint::Completions, b"{"), Err(ParseError::InvalidJson(_))));
        assert_eq!(parse(Endpoint::Completions, b"[1]"), Err(ParseError::NotAnObject));
        assert_eq!(p(Endpoint::Completions, json!({"prompt": "x"})), Err(ParseError::MissingModel));
        for bad in [json!(""), json!([]), json!([[]]), json!([-1]), json!(["a", 1]), json!({"x": 1})] {
            let err = p(Endpoint::Completions, json!({"model": "m", "prompt": bad})).expect_err("rejected");
            assert!(matches!(err, ParseError::Invalid(_)), "{bad}: {err:?}");
        }
        let err = p(Endpoint::ChatCompletions, json!({"model": "m", "messages": []})).expect_err("rejected");
        assert!(err.to_string().contains("messages"));
        assert_eq!(p(Endpoint::Other, json!({"model": "m", "input": "x"})).map(|r| r.kind), Ok(Kind::Other));
    }

    #[test]
    fn paths_map_to_endpoints() {
        assert_eq!(endpoint_of("/v1/completions?x=1"), Endpoint::Completions);
        assert_eq!(endpoint_of("/v1/chat/completions"), Endpoint::ChatCompletions);
        assert_eq!(endpoint_of("/v1/embeddings"), Endpoint::Other);
    }
}
