//! vllm-sim's HTTP API, checked against vLLM's wire shapes by running the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{client, procs};
use serde_json::{json, Value};

async fn post(url: String, body: Value) -> (u16, Value) {
    let res = client().post(url).json(&body).send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.expect("json body"))
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().expect("object").keys().map(String::as_str).collect()
}

#[tokio::test]
async fn tokenize_and_detokenize_have_vllm_shapes_and_defaults() {
    let sim = procs::sim(&[]);
    let (status, body) = post(sim.url("/tokenize"), json!({"model": "tiny-chat", "prompt": "Hello world"})).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"count": 2, "max_model_len": 32768, "tokens": [9707, 1879], "token_strs": null}));
    assert_eq!(keys(&body), ["count", "max_model_len", "tokens", "token_strs"]);

    let (_, with_strs) = post(sim.url("/tokenize"), json!({"prompt": "Hello world", "return_token_strs": true})).await;
    assert_eq!(with_strs["token_strs"], json!(["Hello", "Ġworld"]));

    let (status, detok) = post(sim.url("/detokenize"), json!({"model": "tiny-chat", "tokens": [9707, 1879]})).await;
    assert_eq!(status, 200);
    assert_eq!(detok, json!({"prompt": "Hello world"}));
}

#[tokio::test]
async fn count_matches_tokens_and_detokenize_round_trips() {
    let sim = procs::sim(&[]);
    let text = "Prefix caching reuses KV blocks — même en français, 日本語も. <|im_start|> stays special.";
    let (_, body) = post(sim.url("/tokenize"), json!({"prompt": text})).await;
    let tokens = body["tokens"].as_array().expect("tokens");
    assert_eq!(body["count"].as_u64(), Some(tokens.len() as u64));
    assert!(tokens.contains(&json!(151644)), "<|im_start|> must be one special token");
    let (_, detok) = post(sim.url("/detokenize"), json!({"tokens": tokens})).await;
    assert_eq!(detok["prompt"], text);
}

#[tokio::test]
async fn chat_form_equals_completion_form_of_the_rendered_template() {
    let sim = procs::sim(&[]);
    let tools = json!([{"type": "function", "function": {"name": "lookup", "description": "Find a thing",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]);
    let messages = json!([
        {"role": "system", "content": "You route requests."},
        {"role": "user", "content": [{"type": "text", "text": "Where"}, {"type": "text", "text": "does it go?"}]}
    ]);
    let (status, chat) = post(
        sim.url("/tokenize"),
        json!({"messages": messages, "tools": tools, "chat_template_kwargs": {"enable_thinking": false}}),
    )
    .await;
    assert_eq!(status, 200, "{chat}");
    // What Qwen3's template renders, written out by hand, tokenized in the completion form.
    let rendered = "<|im_start|>system\nYou route requests.\n\n# Tools\n\nYou may call one or more functions to assist \
        with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n\
        {\"type\": \"function\", \"function\": {\"name\": \"lookup\", \"description\": \"Find a thing\", \"parameters\": \
        {\"type\": \"object\", \"properties\": {\"q\": {\"type\": \"string\"}}, \"required\": [\"q\"]}}}\n</tools>\n\n\
        For each function call, return a json object with function name and arguments within <tool_call></tool_call> \
        XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n\
        <|im_start|>user\nWhere\ndoes it go?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";
    let (_, completion) = post(sim.url("/tokenize"), json!({"prompt": rendered, "add_special_tokens": false})).await;
    assert_eq!(chat["tokens"], completion["tokens"]);

    // Thinking on (the template's default) renders differently: the kwargs really reach the template.
    let (_, thinking) = post(sim.url("/tokenize"), json!({"messages": messages, "tools": tools})).await;
    assert_ne!(thinking["tokens"], chat["tokens"]);
}

#[tokio::test]
async fn errors_use_vllm_status_codes_and_bodies() {
    let sim = procs::sim(&[]);
    let (status, body) = post(sim.url("/tokenize"), json!({"model": "other", "prompt": "x"})).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"error": {"message": "The model `other` does not exist.", "type": "NotFoundError", "param": null, "code": 404}})
    );
    let (status, body) = post(sim.url("/v1/completions"), json!({"model": "other", "prompt": "x"})).await;
    assert_eq!((status, body["error"]["code"].as_u64()), (404, Some(404)));

    let res = client().post(sim.url("/v1/completions")).body("{not json").send().await.expect("request");
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["type"], "BadRequestError");

    let both = json!({"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": true,
        "continue_final_message": true});
    let (status, body) = post(sim.url("/tokenize"), both).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().expect("message").contains("continue_final_message"));

    let (status, _) = post(sim.url("/detokenize"), json!({"tokens": [999_999_999]})).await;
    assert_eq!(status, 400);
    let (status, _) = post(sim.url("/v1/completions"), json!({"prompt": ""})).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn render_gives_the_tokens_generation_would_take_without_generating() {
    let sim = procs::sim(&[]);
    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where to?"}]);
    let (status, chat) =
        post(sim.url("/v1/chat/completions/render"), json!({"model": "tiny-chat", "messages": messages})).await;
    assert_eq!(status, 200, "{chat}");
    let (_, tokenized) = post(sim.url("/tokenize"), json!({"messages": messages})).await;
    assert_eq!(chat["token_ids"], tokenized["tokens"], "the chat template applied as for generation");
    assert_eq!((chat["model"].as_str(), chat["features"].is_null()), (Some("tiny-chat"), true));

    // A completion renders one request per prompt, token ids passed through as they are.
    let (status, batch) =
        post(sim.url("/v1/completions/render"), json!({"prompt": ["Hello world", "Bye"], "max_tokens": 3})).await;
    assert_eq!(status, 200, "{batch}");
    let ids: Vec<&Value> = batch.as_array().expect("a list").iter().map(|r| &r["token_ids"]).collect();
    let (_, hello) = post(sim.url("/tokenize"), json!({"prompt": "Hello world"})).await;
    assert_eq!(ids.first().copied(), Some(&hello["tokens"]));
    assert_eq!(ids.len(), 2);
    let (_, same) = post(sim.url("/v1/completions/render"), json!({"prompt": [9707, 1879]})).await;
    assert_eq!(same[0]["token_ids"], json!([9707, 1879]));

    // Errors as generation answers them; nothing was generated or cached.
    let (status, _) =
        post(sim.url("/v1/chat/completions/render"), json!({"model": "other", "messages": messages})).await;
    assert_eq!(status, 404);
    let (status, _) = post(sim.url("/v1/completions/render"), json!({"prompt": ""})).await;
    assert_eq!(status, 400);
    let metrics = client().get(sim.url("/metrics")).send().await.expect("get").text().await.expect("text");
    let value = |name: &str| {
        metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
    };
    assert_eq!(value("vllm_sim_render_requests_total"), Some(3.0));
    assert_eq!(value("vllm:prompt_tokens_total"), Some(0.0));
}

#[tokio::test]
async fn completions_accept_every_prompt_form_and_report_usage() {
    let sim = procs::sim(&["--decode-ms-per-token", "0"]);
    for prompt in [json!("Hello world"), json!(["Hello world", "Bye"]), json!([9707, 1879]), json!([[9707], [1879, 1]])]
    {
        let (status, body) =
            post(sim.url("/v1/completions"), json!({"model": "tiny-chat", "prompt": prompt, "max_tokens": 3})).await;
        assert_eq!(status, 200, "{prompt}: {body}");
        let n = if prompt.as_array().is_some_and(|a| a.iter().all(|x| !x.is_number())) {
            prompt.as_array().map_or(1, Vec::len)
        } else {
            1
        };
        assert_eq!(body["choices"].as_array().map(Vec::len), Some(n), "{body}");
        assert_eq!(body["usage"]["completion_tokens"].as_u64(), Some(3 * n as u64));
        assert!(body["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());
    }
    let models: Value = client().get(sim.url("/v1/models")).send().await.expect("get").json().await.expect("json");
    assert_eq!(models["data"][0]["id"], "tiny-chat");
}

#[tokio::test]
async fn sse_streams_end_in_done_with_usage() {
    let sim = procs::sim(&["--decode-ms-per-token", "1"]);
    let req = json!({"model": "tiny-chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
        "stream": true, "stream_options": {"include_usage": true}});
    let res = client().post(sim.url("/v1/chat/completions")).json(&req).send().await.expect("request");
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let text = res.text().await.expect("body");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").expect("data line")).expect("json chunk"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: Vec<&str> = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content.len(), 6, "role chunk + 5 tokens");
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert_eq!(usage["completion_tokens"], 5);
    assert_eq!(usage["prompt_tokens"], 9);

    // curl -N, as a user would run it.
    let out = std::process::Command::new("curl")
        .args(["-sN", &sim.url("/v1/completions"), "-d", r#"{"prompt":"Hi","max_tokens":2,"stream":true}"#])
        .output()
        .expect("curl runs");
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn faults_switch_on_and_off_at_run_time() {
    let sim = procs::sim(&[]);
    let http = client();
    assert_eq!(http.get(sim.url("/health")).send().await.expect("health").status().as_u16(), 200);
    let set = |f: Value| http.put(sim.url("/sim/faults")).json(&f).send();
    assert_eq!(set(json!({"health_fail": true, "tokenize_error_rate": 1.0})).await.expect("put").status(), 200);
    assert_eq!(http.get(sim.url("/health")).send().await.expect("health").status().as_u16(), 503);
    let (status, body) = post(sim.url("/tokenize"), json!({"prompt": "x"})).await;
    assert_eq!((status, body["error"]["code"].clone()), (500, json!(500)));

    set(json!({"tokenize_hang": true})).await.expect("put");
    let hung = http
        .post(sim.url("/tokenize"))
        .json(&json!({"prompt": "x"}))
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    assert!(hung.is_err_and(|e| e.is_timeout()));

    set(json!({"tokenize_delay_ms": 200})).await.expect("put");
    let t = std::time::Instant::now();
    let (status, _) = post(sim.url("/tokenize"), json!({"prompt": "x"})).await;
    assert_eq!(status, 200);
    assert!(t.elapsed() >= std::time::Duration::from_millis(200));
    assert_eq!(http.get(sim.url("/health")).send().await.expect("health").status().as_u16(), 200);

    assert_eq!(set(json!({"tokenize_error_rate": 2.0})).await.expect("put").status(), 400);
    assert_eq!(set(json!({"typo": true})).await.expect("put").status(), 400);
}

#[tokio::test]
async fn a_request_chat_template_is_refused_unless_the_sim_trusts_it_as_vllm_does() {
    let body = json!({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}],
                      "chat_template": "{% for m in messages %}[{{ m.content }}]{% endfor %}"});
    let sim = procs::sim(&[]);
    for path in ["/tokenize", "/v1/chat/completions"] {
        let (status, err) = post(sim.url(path), body.clone()).await;
        assert_eq!(status, 400, "{path}");
        assert!(err["error"]["message"].as_str().is_some_and(|m| m.contains("--trust-request-chat-template")), "{err}");
    }
    let trusting = procs::sim(&["--trust-request-chat-template"]);
    let (status, tokens) = post(trusting.url("/tokenize"), body).await;
    assert_eq!(status, 200, "{tokens}");
    let (_, text) = post(trusting.url("/detokenize"), json!({"tokens": tokens["tokens"]})).await;
    assert_eq!(text["prompt"], "[hi]", "the request's own template was applied");
}
