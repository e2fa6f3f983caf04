//! HTTP routes: vLLM's API plus `/sim/*` controls for tests.

use super::error::SimError;
use super::faults::Faults;
use super::prompt::{opt_bool, parse_object};
use super::{generate, Sim};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

/// Largest request body the sim reads.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

pub(crate) fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/completions", post(generate::completions))
        .route("/v1/chat/completions", post(generate::chat_completions))
        .route("/v1/completions/render", post(render_completion))
        .route("/v1/chat/completions/render", post(render_chat))
        .route("/sim/faults", get(get_faults).put(put_faults))
        .route("/sim/prefix", post(prefix))
        .route("/kv_event_sources", get(kv_event_sources))
        .route("/reset_prefix_cache", post(reset_prefix_cache))
        // vLLM (FastAPI) sets no body limit; axum's default of 2 MB would reset long prompts.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&sim), stamp_id))
        .with_state(sim)
        .layer(axum::middleware::from_fn(log_request))
}

async fn log_request(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let res = next.run(req).await;
    tracing::debug!(%method, %path, status = res.status().as_u16(), "request");
    res
}

/// `x-sim-id` on every response names the pod that answered.
async fn stamp_id(State(sim): State<Arc<Sim>>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut res = next.run(req).await;
    if let Ok(v) = axum::http::HeaderValue::from_str(&sim.id) {
        res.headers_mut().insert("x-sim-id", v);
    }
    res
}

async fn tokenize(State(sim): State<Arc<Sim>>, body: Bytes) -> Result<Response, SimError> {
    let faults = sim.faults.get();
    if faults.tokenize_delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(faults.tokenize_delay_ms)).await;
    }
    if faults.tokenize_hang {
        // Held until the client gives up and the connection closes.
        std::future::pending::<()>().await;
    }
    if faults.tokenize_error_rate > 0.0 && rand::random::<f64>() < faults.tokenize_error_rate {
        return Err(SimError::Injected);
    }
    let obj = parse_object(&body)?;
    sim.resolve_model(obj.get("model").and_then(Value::as_str))?;
    let tokens = if obj.contains_key("messages") {
        sim.chat_tokens(&obj, false)?
    } else {
        match obj.get("prompt") {
            Some(Value::String(p)) => sim.text_tokens(p, opt_bool(&obj, "add_special_tokens", true)?)?,
            Some(_) => return Err(SimError::BadRequest("'prompt' must be a string".into())),
            None => return Err(SimError::BadRequest("either 'prompt' or 'messages' is required".into())),
        }
    };
    let token_strs = if opt_bool(&obj, "return_token_strs", false)? {
        json!(sim.tokenizer.token_strs(&tokens))
    } else {
        Value::Null
    };
    let body =
        json!({"count": tokens.len(), "max_model_len": sim.max_model_len, "tokens": tokens, "token_strs": token_strs});
    sim.metrics.tokenize_calls.inc();
    Ok(Json(body).into_response())
}

async fn detokenize(State(sim): State<Arc<Sim>>, body: Bytes) -> Result<Json<Value>, SimError> {
    let obj = parse_object(&body)?;
    sim.resolve_model(obj.get("model").and_then(Value::as_str))?;
    let tokens: Vec<u32> = match obj.get("tokens") {
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| SimError::BadRequest("'tokens' must be a list of token ids".into()))?,
        None => return Err(SimError::BadRequest("'tokens' is required".into())),
    };
    let vocab = sim.tokenizer.vocab_size();
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(SimError::BadRequest(format!("token id {bad} is out of vocabulary")));
    }
    let prompt = sim.tokenizer.decode(&tokens).map_err(SimError::Internal)?;
    Ok(Json(json!({ "prompt": prompt })))
}

/// vLLM's render endpoints: a request's prompt tokens as the engine would take them (chat
/// template applied), without generating. vLLM answers a chat with one generate request and a
/// completion with one per prompt; the sim fills the fields a router reads (`token_ids`, no
/// multimodal `features`) and names the model and the request.
fn rendered(sim: &Sim, obj: &serde_json::Map<String, Value>, tokens: Vec<u32>, n: usize) -> Value {
    let model = obj.get("model").and_then(Value::as_str).unwrap_or(&sim.served[0]);
    json!({"request_id": format!("render-{:016x}-{n}", rand::random::<u64>()), "token_ids": tokens, "features": null,
        "model": model, "stream": obj.get("stream").and_then(Value::as_bool).unwrap_or(false)})
}

async fn render_chat(State(sim): State<Arc<Sim>>, body: Bytes) -> Result<Json<Value>, SimError> {
    let obj = parse_object(&body)?;
    let mut p = sim.chat_prompt(&obj)?;
    sim.metrics.render_calls.inc();
    Ok(Json(rendered(&sim, &obj, p.prompts.swap_remove(0), 0)))
}

async fn render_completion(State(sim): State<Arc<Sim>>, body: Bytes) -> Result<Json<Value>, SimError> {
    let obj = parse_object(&body)?;
    let p = sim.completion_prompts(&obj)?;
    sim.metrics.render_calls.inc();
    Ok(Json(Value::Array(p.prompts.into_iter().enumerate().map(|(n, t)| rendered(&sim, &obj, t, n)).collect())))
}

async fn health(State(sim): State<Arc<Sim>>) -> StatusCode {
    if sim.faults.get().health_fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn models(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let card = |id: &str, parent: Option<&str>| {
        json!({
            "id": id, "object": "model", "created": sim.created, "owned_by": "vllm",
            "root": parent.map_or(sim.root.as_str(), |_| id), "parent": parent, "max_model_len": sim.max_model_len,
        })
    };
    let mut data: Vec<Value> = sim.served.iter().map(|m| card(m, None)).collect();
    data.extend(sim.loras.iter().map(|l| card(l, Some(&sim.served[0]))));
    Json(json!({ "object": "list", "data": data }))
}

async fn metrics(State(sim): State<Arc<Sim>>) -> impl IntoResponse {
    sim.metrics.kv_usage.set(sim.engine.usage());
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], sim.metrics.render())
}

async fn get_faults(State(sim): State<Arc<Sim>>) -> Json<Faults> {
    Json(sim.faults.get())
}

async fn put_faults(State(sim): State<Arc<Sim>>, body: Bytes) -> Result<Json<Faults>, SimError> {
    let faults: Faults =
        serde_json::from_slice(&body).map_err(|e| SimError::BadRequest(format!("invalid faults: {e}")))?;
    faults.validate().map_err(SimError::BadRequest)?;
    sim.faults.set(faults.clone());
    tracing::info!(?faults, "faults changed");
    Ok(Json(faults))
}

/// How much of a completion or chat request's prompt this pod's cache holds right now, and how
/// much it holds or is computing for requests queued or prefilling here (for a benchmark's oracle
/// policy). Nothing is scheduled or touched.
async fn prefix(State(sim): State<Arc<Sim>>, body: Bytes) -> Result<Json<Value>, SimError> {
    let obj = parse_object(&body)?;
    let p = if obj.contains_key("messages") { sim.chat_prompt(&obj)? } else { sim.completion_prompts(&obj)? };
    let keys = p.keys();
    let (mut prompt_tokens, mut cached_tokens, mut coming_tokens) = (0, 0, 0);
    for tokens in &p.prompts {
        let hashes = crate::kv_hash::block_hashes(tokens, sim.block_size, &keys);
        prompt_tokens += tokens.len();
        cached_tokens += sim.engine.cached_blocks(&hashes) * sim.block_size;
        coming_tokens += sim.engine.cached_or_coming_blocks(&hashes) * sim.block_size;
    }
    Ok(Json(json!({
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached_tokens,
        "cached_or_coming_tokens": coming_tokens,
    })))
}

/// vLLM's resolved KV-events config per data-parallel rank (`{}` when events are off).
async fn kv_event_sources(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(sim.kv_event_sources.clone())
}

/// Drops every cached block (emitting `AllBlocksCleared`); refused while requests hold blocks.
async fn reset_prefix_cache(State(sim): State<Arc<Sim>>) -> Response {
    if sim.engine.reset_prefix_cache() {
        StatusCode::OK.into_response()
    } else {
        SimError::Conflict("the prefix cache cannot be reset while requests hold blocks".into()).into_response()
    }
}
