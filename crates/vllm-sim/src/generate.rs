//! `/v1/completions` and `/v1/chat/completions`: queue, prefill against the modelled cache, then
//! decode deterministic text, whole or as SSE ending in `data: [DONE]`.

use super::error::SimError;
use super::prompt::{opt_bool, parse_object, Prompted};
use super::Sim;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::future::join_all;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc;

const WORDS: &[&str] = &[" the", " cache", " holds", " every", " prefix", " of", " this", " prompt", " and", " more"];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

pub(crate) async fn completions(State(sim): State<Arc<Sim>>, body: Bytes) -> Result<Response, SimError> {
    let obj = parse_object(&body)?;
    let prompted = sim.completion_prompts(&obj)?;
    serve(sim, &obj, prompted, Kind::Completion, &body).await
}

pub(crate) async fn chat_completions(State(sim): State<Arc<Sim>>, body: Bytes) -> Result<Response, SimError> {
    let obj = parse_object(&body)?;
    let prompted = sim.chat_prompt(&obj)?;
    serve(sim, &obj, prompted, Kind::Chat, &body).await
}

struct Job {
    sim: Arc<Sim>,
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    max_tokens: usize,
    include_usage: bool,
    keys: crate::kv_hash::BlockKeys,
    prompts: Vec<Vec<u32>>,
}

async fn serve(
    sim: Arc<Sim>,
    obj: &Map<String, Value>,
    p: Prompted,
    kind: Kind,
    raw: &[u8],
) -> Result<Response, SimError> {
    let limit_key = if kind == Kind::Chat && obj.contains_key("max_completion_tokens") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = match obj.get(limit_key) {
        None | Some(Value::Null) => sim.default_max_tokens,
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .map(|n| n as usize)
            .ok_or_else(|| SimError::BadRequest(format!("'{limit_key}' must be a positive integer")))?,
    };
    let capacity = sim.engine.capacity_tokens(sim.block_size);
    for tokens in &p.prompts {
        let want = tokens.len() + max_tokens;
        if want > sim.max_model_len || want > capacity {
            return Err(SimError::BadRequest(format!(
                "This model's maximum context length is {} tokens. However, you requested {want} tokens ({} in the \
                 messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
                sim.max_model_len.min(capacity),
                tokens.len()
            )));
        }
    }
    let stream = opt_bool(obj, "stream", false)?;
    let include_usage =
        obj.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    let model = obj.get("model").and_then(Value::as_str).unwrap_or(&sim.served[0]).to_owned();
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
    let id = format!("{prefix}-{:016x}", rand::random::<u64>());
    let keys = p.keys();
    let job =
        Job { sim: Arc::clone(&sim), kind, id, model, created, max_tokens, include_usage, keys, prompts: p.prompts };

    if stream {
        // The task owns the running request; it ends (and frees it) when the client goes away.
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        tokio::spawn(job.stream(tx));
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>));
        Ok(with_body_headers(raw, ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()))
    } else {
        // As vLLM: the whole completion, then the response. A client that leaves drops this future.
        let body = job.whole().await;
        Ok(with_body_headers(raw, ([(header::CONTENT_TYPE, "application/json")], body).into_response()))
    }
}

/// The body's length and hash let tests check that what arrived is byte-identical to what the
/// client sent.
fn with_body_headers(raw: &[u8], mut res: Response) -> Response {
    let h = res.headers_mut();
    let pairs = [
        ("x-sim-body-bytes", raw.len().to_string()),
        ("x-sim-body-xxh3", format!("{:016x}", xxhash_rust::xxh3::xxh3_64(raw))),
    ];
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    res
}

impl Job {
    fn word(&self, prompt: &[u32], i: usize) -> &'static str {
        let start = prompt.first().copied().unwrap_or(0) as usize + prompt.len();
        WORDS[(start + i) % WORDS.len()]
    }

    async fn start_all(&self) -> Vec<super::engine::Running> {
        let engine = &self.sim.engine;
        let bs = self.sim.block_size;
        join_all(self.prompts.iter().map(|tokens| {
            let seq = super::cache::Seq::new(tokens, bs, self.keys.clone());
            async move { engine.start(&seq, self.max_tokens).await }
        }))
        .await
    }

    fn usage(&self, running: &[super::engine::Running]) -> Value {
        let prompt: usize = running.iter().map(|r| r.prompt_tokens).sum();
        let cached: usize = running.iter().map(|r| r.cached_tokens).sum();
        let completion = self.max_tokens * running.len();
        json!({
            "prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": cached}
        })
    }

    async fn whole(self) -> Bytes {
        let running = self.start_all().await;
        super::engine::pause(self.sim.engine.decode_delay() * self.max_tokens as u32).await;
        self.sim.metrics.generation_tokens.inc_by((self.max_tokens * running.len()) as u64);
        let choices: Vec<Value> = self
            .prompts
            .iter()
            .enumerate()
            .map(|(index, prompt)| {
                let text: String = (0..self.max_tokens).map(|i| self.word(prompt, i)).collect();
                match self.kind {
                    Kind::Completion => json!({"index": index, "text": text, "logprobs": null,
                        "finish_reason": "length", "stop_reason": null, "prompt_logprobs": null}),
                    Kind::Chat => {
                        json!({"index": index, "message": {"role": "assistant", "content": text,
                        "reasoning_content": null, "tool_calls": []},
                        "logprobs": null, "finish_reason": "length", "stop_reason": null})
                    }
                }
            })
            .collect();
        let object = if self.kind == Kind::Chat { "chat.completion" } else { "text_completion" };
        let body = json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": choices, "usage": self.usage(&running)});
        drop(running);
        Bytes::from(body.to_string())
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> Bytes {
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        let mut body = json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": choices});
        if let Some(u) = usage {
            body["usage"] = u;
        }
        Bytes::from(format!("data: {body}\n\n"))
    }

    /// Streams until done or until the client goes away (a send fails); either way the running
    /// requests are dropped and their slots and blocks freed.
    async fn stream(self, tx: mpsc::Sender<Bytes>) {
        let running = self.start_all().await;
        if self.kind == Kind::Chat {
            let first = (0..self.prompts.len())
                .map(|index| {
                    json!({"index": index, "delta": {"role": "assistant", "content": ""},
                    "logprobs": null, "finish_reason": null})
                })
                .collect();
            if tx.send(self.chunk(first, None)).await.is_err() {
                return;
            }
        }
        for i in 0..self.max_tokens {
            if i > 0 {
                super::engine::pause(self.sim.engine.decode_delay()).await;
            }
            let finish = if i + 1 == self.max_tokens { json!("length") } else { Value::Null };
            let choices = self
                .prompts
                .iter()
                .enumerate()
                .map(|(index, prompt)| match self.kind {
                    Kind::Completion => {
                        json!({"index": index, "text": self.word(prompt, i), "logprobs": null,
                        "finish_reason": finish, "stop_reason": null})
                    }
                    Kind::Chat => {
                        json!({"index": index, "delta": {"content": self.word(prompt, i)},
                        "logprobs": null, "finish_reason": finish})
                    }
                })
                .collect();
            if tx.send(self.chunk(choices, None)).await.is_err() {
                return;
            }
            self.sim.metrics.generation_tokens.inc_by(running.len() as u64);
        }
        if self.include_usage && tx.send(self.chunk(json!([]), Some(self.usage(&running)))).await.is_err() {
            return;
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    }
}
