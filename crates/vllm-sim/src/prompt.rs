//! Request bodies → prompt tokens, as vLLM reads them.

use super::error::SimError;
use super::Sim;
use hf_chat::ChatInput;
use serde_json::{Map, Value};

/// A parsed generation or tokenize request.
pub(crate) struct Prompted {
    /// One token sequence per prompt (completions accept a batch).
    pub prompts: Vec<Vec<u32>>,
    /// `Some(adapter)` when the request names a LoRA adapter.
    pub lora: Option<String>,
    pub cache_salt: Option<String>,
}

pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, SimError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(SimError::BadRequest("the request body must be a JSON object".into())),
        Err(e) => Err(SimError::BadRequest(format!("invalid JSON: {e}"))),
    }
}

pub(crate) fn opt_bool(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool, SimError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(SimError::BadRequest(format!("'{key}' must be a boolean"))),
    }
}

fn opt_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, SimError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(SimError::BadRequest(format!("'{key}' must be a string"))),
    }
}

impl Sim {
    pub(crate) fn chat_tokens(
        &self,
        obj: &Map<String, Value>,
        add_special_default: bool,
    ) -> Result<Vec<u32>, SimError> {
        let input = ChatInput::from_request(obj).map_err(|e| SimError::BadRequest(e.to_string()))?;
        if input.chat_template.is_some() && !self.trust_request_chat_template {
            return Err(SimError::BadRequest(
                "Chat template is passed with request, but --trust-request-chat-template is not set. \
                 Refused request with untrusted chat template."
                    .into(),
            ));
        }
        let add_special = opt_bool(obj, "add_special_tokens", add_special_default)?;
        self.tokenizer.encode_chat(&input, add_special).map_err(|e| match e {
            hf_chat::ChatError::Tokenize(m) => SimError::Internal(m),
            other => SimError::BadRequest(other.to_string()),
        })
    }

    pub(crate) fn text_tokens(&self, text: &str, add_special: bool) -> Result<Vec<u32>, SimError> {
        self.tokenizer.encode(text, add_special).map_err(SimError::Internal)
    }

    fn check_ids(&self, ids: Vec<u32>) -> Result<Vec<u32>, SimError> {
        let vocab = self.tokenizer.vocab_size();
        match ids.iter().find(|&&id| id as usize >= vocab) {
            Some(bad) => Err(SimError::BadRequest(format!("token id {bad} is out of vocabulary"))),
            None => Ok(ids),
        }
    }

    /// `/v1/completions`: prompt as a string, strings, token ids or lists of token ids.
    pub(crate) fn completion_prompts(&self, obj: &Map<String, Value>) -> Result<Prompted, SimError> {
        let add_special = opt_bool(obj, "add_special_tokens", true)?;
        let prompt = obj.get("prompt").ok_or_else(|| SimError::BadRequest("'prompt' is required".into()))?;
        let prompts = match prompt {
            Value::String(s) => vec![self.text_tokens(s, add_special)?],
            Value::Array(items) if items.is_empty() => {
                return Err(SimError::BadRequest("'prompt' must not be empty".into()))
            }
            Value::Array(items) if items.iter().all(Value::is_string) => items
                .iter()
                .map(|s| self.text_tokens(s.as_str().unwrap_or_default(), add_special))
                .collect::<Result<_, _>>()?,
            Value::Array(items) if items.iter().all(Value::is_u64) => {
                vec![self.check_ids(ids_of(items)?)?]
            }
            Value::Array(items) if items.iter().all(Value::is_array) => items
                .iter()
                .map(|seq| self.check_ids(ids_of(seq.as_array().map(Vec::as_slice).unwrap_or_default())?))
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(SimError::BadRequest(
                    "'prompt' must be a string, a list of strings, token ids or lists of token ids".into(),
                ))
            }
        };
        self.finish(obj, prompts)
    }

    /// `/v1/chat/completions`: the chat template applied as vLLM applies it.
    pub(crate) fn chat_prompt(&self, obj: &Map<String, Value>) -> Result<Prompted, SimError> {
        let tokens = self.chat_tokens(obj, false)?;
        self.finish(obj, vec![tokens])
    }

    fn finish(&self, obj: &Map<String, Value>, prompts: Vec<Vec<u32>>) -> Result<Prompted, SimError> {
        let lora = self.resolve_model(opt_str(obj, "model")?)?;
        if prompts.iter().any(Vec::is_empty) {
            return Err(SimError::BadRequest("the prompt cannot be empty".into()));
        }
        let cache_salt = opt_str(obj, "cache_salt")?.map(str::to_owned);
        Ok(Prompted { prompts, lora, cache_salt })
    }
}

fn ids_of(items: &[Value]) -> Result<Vec<u32>, SimError> {
    items
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| SimError::BadRequest("token ids must be non-negative integers".into()))
        })
        .collect()
}

impl Prompted {
    /// What separates this request's blocks from equal tokens of another adapter or salt.
    pub(crate) fn keys(&self) -> crate::kv_hash::BlockKeys {
        crate::kv_hash::BlockKeys { lora: self.lora.clone(), cache_salt: self.cache_salt.clone() }
    }
}
