//! vLLM's `/tokenize`, as a client: the request in the form vLLM expects for the request's kind
//! (chat form so the engine applies its own chat template), the response checked, each failure
//! classified for metrics and fallback.

use crate::openai::{InferenceRequest, Kind, Prompt};
use serde_json::{Map, Value};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("timeout")]
    Timeout,
    #[error("connect_error")]
    Connect,
    #[error("http_error")]
    Http,
    #[error("bad_response")]
    BadResponse,
}

impl CallError {
    pub const ALL: [CallError; 4] = [CallError::Timeout, CallError::Connect, CallError::Http, CallError::BadResponse];

    pub fn label(self) -> &'static str {
        match self {
            CallError::Timeout => "timeout",
            CallError::Connect => "connect_error",
            CallError::Http => "http_error",
            CallError::BadResponse => "bad_response",
        }
    }
}

/// The `/tokenize` body for a request, or `None` when it needs no call (token ids, other paths).
pub fn tokenize_body(req: &InferenceRequest) -> Option<Value> {
    let mut m = Map::new();
    m.insert("model".into(), Value::String(req.model.clone()));
    match &req.kind {
        Kind::Completion(Prompt::Text(t)) => completion(&mut m, t),
        Kind::Completion(Prompt::Texts(t)) => completion(&mut m, t.first()?),
        Kind::Chat(c) => {
            m.insert("messages".into(), Value::Array(c.messages.clone()));
            m.insert("add_generation_prompt".into(), Value::Bool(c.add_generation_prompt));
            m.insert("continue_final_message".into(), Value::Bool(c.continue_final_message));
            m.insert("add_special_tokens".into(), Value::Bool(false));
            if let Some(t) = &c.chat_template {
                m.insert("chat_template".into(), Value::String(t.clone()));
            }
            if let Some(k) = &c.chat_template_kwargs {
                m.insert("chat_template_kwargs".into(), Value::Object(k.clone()));
            }
            if let Some(t) = &c.tools {
                m.insert("tools".into(), Value::Array(t.clone()));
            }
        }
        Kind::Completion(Prompt::Ids(_) | Prompt::IdLists(_)) | Kind::Other => return None,
    }
    Some(Value::Object(m))
}

fn completion(m: &mut Map<String, Value>, text: &str) {
    m.insert("prompt".into(), Value::String(text.to_owned()));
    m.insert("add_special_tokens".into(), Value::Bool(true));
    m.insert("return_token_strs".into(), Value::Bool(false));
}

#[derive(serde::Deserialize)]
struct TokenizeResponse {
    count: usize,
    tokens: Vec<u32>,
}

/// One call to one endpoint, bounded by `timeout`.
pub async fn call(http: &reqwest::Client, url: &str, body: &[u8], timeout: Duration) -> Result<Vec<u32>, CallError> {
    let sent = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec())
        .timeout(timeout)
        .send()
        .await
        .map_err(classify)?;
    if !sent.status().is_success() {
        return Err(CallError::Http);
    }
    let bytes = sent.bytes().await.map_err(classify)?;
    let parsed: TokenizeResponse = serde_json::from_slice(&bytes).map_err(|_| CallError::BadResponse)?;
    if parsed.count != parsed.tokens.len() || parsed.tokens.is_empty() {
        return Err(CallError::BadResponse);
    }
    Ok(parsed.tokens)
}

fn classify(e: reqwest::Error) -> CallError {
    if e.is_timeout() {
        CallError::Timeout
    } else if e.is_connect() {
        CallError::Connect
    } else if e.is_decode() || e.is_body() {
        CallError::BadResponse
    } else {
        CallError::Http
    }
}

/// The pod's tokenizer URL from the template: `%s`/`{ip}` → IP (IPv6 bracketed), `{port}` → port.
pub fn endpoint_url(template: &str, addr: std::net::SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    let base = template.replace("%s", &ip).replace("{ip}", &ip).replace("{port}", &addr.port().to_string());
    format!("{}/tokenize", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::{parse, Endpoint};

    /// Golden bytes of both forms: what vLLM receives.
    #[test]
    fn request_forms_match_vllm() {
        let req = parse(Endpoint::Completions, br#"{"model":"m","prompt":"hi","max_tokens":3}"#).expect("parses");
        assert_eq!(
            tokenize_body(&req).expect("form").to_string(),
            r#"{"model":"m","prompt":"hi","add_special_tokens":true,"return_token_strs":false}"#
        );
        let req = parse(
            Endpoint::ChatCompletions,
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"chat_template_kwargs":{"enable_thinking":false},"tools":[{"type":"function","function":{"name":"f"}}]}"#,
        )
        .expect("parses");
        assert_eq!(
            tokenize_body(&req).expect("form").to_string(),
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"add_generation_prompt":true,"continue_final_message":false,"add_special_tokens":false,"chat_template_kwargs":{"enable_thinking":false},"tools":[{"type":"function","function":{"name":"f"}}]}"#
        );
        let ids = parse(Endpoint::Completions, br#"{"model":"m","prompt":[1,2]}"#).expect("parses");
        assert!(tokenize_body(&ids).is_none());
    }

    #[test]
    fn templates_fill_ip_and_port() {
        let v4: std::net::SocketAddr = "10.1.2.3:8080".parse().expect("addr");
        let v6: std::net::SocketAddr = "[fd00::1]:8000".parse().expect("addr");
        assert_eq!(endpoint_url("http://%s:8000", v4), "http://10.1.2.3:8000/tokenize");
        assert_eq!(endpoint_url("http://{ip}:{port}/", v4), "http://10.1.2.3:8080/tokenize");
        assert_eq!(endpoint_url("http://%s:8000", v6), "http://[fd00::1]:8000/tokenize");
    }
}
