//! OpenAI-style request bodies → what routing needs: model, prompt in its original form, and
//! what separates cache blocks (`cache_salt`). The body itself is passed on untouched.

use crate::hf::ChatInput;
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

pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<InferenceRequest, ParseError> {
    let obj = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => obj,
        Ok(_) => return Err(ParseError::NotAnObject),
        Err(e) => return Err(ParseError::InvalidJson(e.to_string())),
    };
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => return Err(ParseError::MissingModel),
        Some(_) => return Err(ParseError::Invalid("'model' must be a string".into())),
    };
    let cache_salt = match obj.get("cache_salt") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            return Err(ParseError::Invalid(
                "'cache_salt' must be a non-empty string".into(),
            ))
        }
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ParseError::Invalid("'stream' must be a boolean".into())),
    };
    let kind = match endpoint {
        Endpoint::Completions => Kind::Completion(prompt(&obj)?),
        Endpoint::ChatCompletions => Kind::Chat(chat(&obj)?),
        Endpoint::Other => Kind::Other,
    };
    Ok(InferenceRequest {
        model,
        kind,
        cache_salt,
        stream,
    })
}

fn prompt(obj: &Map<String, Value>) -> Result<Prompt, ParseError> {
    let empty = || ParseError::Invalid("'prompt' must not be empty".into());
    let ids = |items: &[Value]| -> Result<Vec<u32>, ParseError> {
        items
            .iter()
            .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| {
                ParseError::Invalid("token ids must be non-negative 32-bit integers".into())
            })
    };
    match obj.get("prompt") {
        None | Some(Value::Null) => Err(ParseError::Invalid("'prompt' is required".into())),
        Some(Value::String(s)) if s.is_empty() => Err(empty()),
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(items)) if items.is_empty() => Err(empty()),
        Some(Value::Array(items)) => match &items[0] {
            Value::String(_) => {
                let texts: Option<Vec<String>> = items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect();
                let texts = texts.ok_or_else(|| {
                    ParseError::Invalid("'prompt' mixes strings and other values".into())
                })?;
                if texts.iter().any(String::is_empty) {
                    return Err(empty());
                }
                Ok(Prompt::Texts(texts))
            }
            Value::Array(_) => {
                let lists = items
                    .iter()
                    .map(|v| {
                        v.as_array().ok_or_else(|| {
                            ParseError::Invalid("'prompt' mixes lists and other values".into())
                        })
                    })
                    .map(|l| l.and_then(|l| if l.is_empty() { Err(empty()) } else { ids(l) }))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Prompt::IdLists(lists))
            }
            _ => Ok(Prompt::Ids(ids(items)?)),
        },
        Some(_) => Err(ParseError::Invalid(
            "'prompt' must be a string, a list of strings, token ids or lists of token ids".into(),
        )),
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
            (
                json!(["a", "b"]),
                Prompt::Texts(vec!["a".into(), "b".into()]),
            ),
            (json!([1, 2]), Prompt::Ids(vec![1, 2])),
            (
                json!([[1], [2, 3]]),
                Prompt::IdLists(vec![vec![1], vec![2, 3]]),
            ),
        ];
        for (prompt, want) in cases {
            let req = p(
                Endpoint::Completions,
                json!({"model": "m", "prompt": prompt}),
            )
            .expect("parses");
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
        let Kind::Chat(chat) = req.kind else {
            panic!("chat")
        };
        assert!(chat.add_generation_prompt);
        assert_eq!(chat.chat_template_kwargs.map(|k| k.len()), Some(1));
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        assert!(matches!(
            parse(Endpoint::Completions, b"{"),
            Err(ParseError::InvalidJson(_))
        ));
        assert_eq!(
            parse(Endpoint::Completions, b"[1]"),
            Err(ParseError::NotAnObject)
        );
        assert_eq!(
            p(Endpoint::Completions, json!({"prompt": "x"})),
            Err(ParseError::MissingModel)
        );
        for bad in [
            json!(""),
            json!([]),
            json!([[]]),
            json!([-1]),
            json!(["a", 1]),
            json!({"x": 1}),
        ] {
            let err = p(Endpoint::Completions, json!({"model": "m", "prompt": bad}))
                .expect_err("rejected");
            assert!(matches!(err, ParseError::Invalid(_)), "{bad}: {err:?}");
        }
        let err = p(
            Endpoint::ChatCompletions,
            json!({"model": "m", "messages": []}),
        )
        .expect_err("rejected");
        assert!(err.to_string().contains("messages"));
        assert_eq!(
            p(Endpoint::Other, json!({"model": "m", "input": "x"})).map(|r| r.kind),
            Ok(Kind::Other)
        );
    }

    #[test]
    fn paths_map_to_endpoints() {
        assert_eq!(endpoint_of("/v1/completions?x=1"), Endpoint::Completions);
        assert_eq!(
            endpoint_of("/v1/chat/completions"),
            Endpoint::ChatCompletions
        );
        assert_eq!(endpoint_of("/v1/embeddings"), Endpoint::Other);
    }
}
