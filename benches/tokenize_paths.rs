//! Remote (vLLM `/tokenize` on 3 sims) versus local tokenization, measured where the router adds
//! latency: one ext_proc decision (headers + body → destination), closed loop with 4 streams.
//! Rows: {local, remote} × {~1k, ~8k tokens} × {cache cold: every prompt new, warm: repeated}.
//! Then: on multi-turn chats, how many tokens a turn shares with the previous turn — what a
//! prefix-aware tokenization cache could skip, which the exact cache cannot — and what the local
//! tokenizer's piece cache (pieces between the template's added tokens) saves on those turns, for
//! chats and for the same turns sent as completion prompts in the template's tokens. Last,
//! shared-prefix chat decisions spaced as at 12 req/s and back to back, with the new question
//! tokenized before the decision or after it.
//!
//! `cargo bench --bench tokenize_paths` (env SECONDS=4 per row). Everything shares 2 cores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/bins.rs"]
mod bins;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request::Request, HttpBody, HttpHeaders, ProcessingRequest, ProtocolConfiguration,
};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &str, args: &[&str]) -> (Kill, String) {
    let mut child = Command::new(bin).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("start-up line");
    (Kill(child), line)
}

fn messages(body: &[u8]) -> Vec<ProcessingRequest> {
    let hv = |k: &str, v: &str| HeaderValue { key: k.into(), raw_value: v.as_bytes().to_vec(), ..Default::default() };
    vec![
        ProcessingRequest {
            protocol_config: Some(ProtocolConfiguration {
                request_body_mode: BodySendMode::FullDuplexStreamed as i32,
                ..Default::default()
            }),
            request: Some(Request::RequestHeaders(HttpHeaders {
                headers: Some(HeaderMap { headers: vec![hv(":method", "POST"), hv(":path", "/v1/completions")] }),
                ..Default::default()
            })),
            ..Default::default()
        },
        ProcessingRequest {
            request: Some(Request::RequestBody(HttpBody {
                body: body.to_vec(),
                end_of_stream: true,
                ..Default::default()
            })),
            ..Default::default()
        },
    ]
}

fn text(tokens: usize, id: u64) -> String {
    // ~9 tokens per sentence with the Qwen3 tokenizer; `id` first so no two prompts share a block.
    (0..tokens / 9).map(|i| format!("Request {id} sentence {i} about blocks. ")).collect()
}

/// Closed loop, 4 streams, `secs`: (requests/s, p50, p99) of one decision.
async fn run(grpc: &str, tokens: usize, warm: bool, secs: u64) -> (f64, f64, f64) {
    let client = ExternalProcessorClient::connect(grpc.to_owned()).await.expect("connect");
    let next = Arc::new(AtomicU64::new(1_000_000 * tokens as u64 + u64::from(warm)));
    let warm_body = Arc::new(serde_json::json!({"model": "m", "prompt": text(tokens, 7)}).to_string().into_bytes());
    if warm {
        let mut c = client.clone();
        let _ = c.process(tokio_stream::iter(messages(&warm_body))).await.expect("prime").into_inner().message().await;
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (client, next, warm_body) = (client.clone(), Arc::clone(&next), Arc::clone(&warm_body));
            tokio::spawn(async move {
                let mut times = Vec::new();
                while Instant::now() < deadline {
                    let body = if warm {
                        warm_body.as_ref().clone()
                    } else {
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        serde_json::json!({"model": "m", "prompt": text(tokens, id)}).to_string().into_bytes()
                    };
                    let mut c = client.clone();
                    let t = Instant::now();
                    let mut s = c.process(tokio_stream::iter(messages(&body))).await.expect("stream").into_inner();
                    s.message().await.expect("answer").expect("decision");
                    times.push(t.elapsed());
                    // Read the rest (the body handed back), as Envoy does: a client that drops
                    // streams mid-answer gets GOAWAY from HTTP/2's rapid-reset protection.
                    while let Ok(Some(_)) = s.message().await {}
                }
                times
            })
        })
        .collect();
    let start = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("joined"));
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1e3;
    (rate, pct(0.5), pct(0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let secs: u64 = std::env::var("SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let tok = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/qwen3");
    let tok = tok.to_str().expect("utf-8");
    let sims: Vec<(Kill, String)> = (0..3)
        .map(|_| {
            start(bins::vllm_sim().to_str().expect("utf-8 path"), &["--port", "0", "--model", "m", "--tokenizer", tok])
        })
        .collect();
    let addrs: Vec<String> = sims
        .iter()
        .map(|(_, l)| format!("\"{}\"", l.trim().rsplit_once("http://").map(|(_, a)| a).expect("addr")))
        .collect();
    let dir = std::env::temp_dir().join(format!("tokenize-paths-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("endpoints.yaml");
    std::fs::write(
        &file,
        format!("models:\n  - name: m\n    tokenizer: {tok}\n    endpoints: [{}]\n", addrs.join(", ")),
    )
    .expect("write");
    let router = |remote: bool| {
        let mut args =
            vec!["--host", "127.0.0.1", "--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", "0"];
        args.extend(["--endpoints-file", file.to_str().expect("utf-8")]);
        if remote {
            args.extend(REMOTE);
        }
        let (k, line) = start(env!("CARGO_BIN_EXE_prefix-router"), &args);
        let grpc = line.split_whitespace().find_map(|w| w.strip_prefix("grpc=")).expect("grpc").to_owned();
        (k, format!("http://{grpc}"))
    };
    const REMOTE: [&str; 4] =
        ["--enable-vllm-remote-tokenizer", "true", "--vllm-tokenizer-endpoint-template", "http://{ip}:{port}"];
    let (_local, local) = router(false);
    let (_remote, remote) = router(true);

    println!("one ext_proc decision, closed loop × 4 streams, {secs} s per row; 3 sims, 2 routers, client: 2 cores\n");
    println!("| tokenization | prompt | cache | decisions/s | p50 | p99 |");
    println!("|---|---:|---|---:|---:|---:|");
    for tokens in [1024usize, 8192] {
        for warm in [false, true] {
            for (name, grpc) in [("local", &local), ("remote (vLLM /tokenize)", &remote)] {
                let (rate, p50, p99) = run(grpc, tokens, warm, secs).await;
                let cache = if warm { "warm" } else { "cold" };
                println!("| {name} | ~{tokens} | {cache} | {rate:.0} | {p50:.2} ms | {p99:.2} ms |");
            }
        }
    }

    // Multi-turn chats: tokens of each turn already tokenized for the previous turn.
    let http = reqwest::Client::new();
    let sim_url = format!("http://{}/tokenize", addrs[0].trim_matches('"'));
    let (mut total, mut shared) = (0u64, 0u64);
    for c in 0..10 {
        let mut msgs: Vec<serde_json::Value> = Vec::new();
        let mut previous = 0u64;
        for t in 0..6 {
            let content: String = (0..12).map(|i| format!("Chat {c} turn {t} point {i} about caching. ")).collect();
            msgs.push(serde_json::json!({"role": "user", "content": content}));
            let res: serde_json::Value = http
                .post(&sim_url)
                .json(&serde_json::json!({"model": "m", "messages": msgs}))
                .send()
                .await
                .expect("tokenize")
                .json()
                .await
                .expect("json");
            let count = res["count"].as_u64().unwrap_or(0);
            total += count;
            shared += previous;
            // The next turn resends this one's text plus the answer.
            msgs.push(serde_json::json!({"role": "assistant", "content": "Understood; noted."}));
            previous = count.saturating_sub(3); // the generation prompt is not part of the next turn's prefix
        }
    }
    println!(
        "\nmulti-turn chat (10 × 6 turns): {shared} of {total} tokenized tokens ({:.0}%) repeat the previous turn — what a \
         prefix-aware tokenization cache could skip; the exact cache skips none of them (every turn is a new request).",
        100.0 * shared as f64 / total.max(1) as f64
    );
    local_chat_pieces(tok);
    spaced_chat_decisions(tok).await;
}

/// The router's tokenization as the server wires it, but always whole before the decision: only
/// `tokenize`, so the trait's `tokenize_leading` has no tail to leave for later.
struct Whole(prefix_router::tokenizer::Tokenization);

impl prefix_router::tokenizer::Tokenize for Whole {
    fn tokenize<'a>(
        &'a self,
        model: &'a Arc<prefix_router::discovery::Model>,
        req: &'a prefix_router::openai::InferenceRequest,
    ) -> futures::future::BoxFuture<'a, Result<prefix_router::tokenizer::Tokens, prefix_router::tokenizer::TokenizeError>>
    {
        self.0.tokenize(model, req)
    }
}

/// Decisions on shared-prefix chats (cached ~1,600-token system prompts, a new ~100-token question
/// each) with 80 ms between requests, as at 12 req/s, and back to back: the new question tokenized
/// before the decision, or after it (the default). Two routers in this process, alternating.
async fn spaced_chat_decisions(tok_dir: &str) {
    use prefix_router::discovery::{EndpointSpec, Engine, ModelSpec, Registry};
    use prefix_router::metrics::Metrics;
    use prefix_router::openai::{parse, Endpoint};
    use prefix_router::routing::Router;
    use prefix_router::tokenizer::{LocalTokenizer, PieceCache, TokenCache, Tokenization, Tokenize};
    let tok = Arc::new(hf_chat::HfTokenizer::from_dir(std::path::Path::new(tok_dir)).expect("tokenizer"));
    let router = |deferred: bool| {
        let registry = Arc::new(Registry::new());
        let endpoints = (1..=4)
            .map(|i| EndpointSpec {
                key: format!("pod-{i}"),
                addr: format!("10.0.0.{i}:8000").parse().expect("addr"),
                engine: Engine::Vllm,
            })
            .collect();
        registry.publish(vec![ModelSpec { name: "m".into(), tokenizer: Some(Arc::clone(&tok)), endpoints }]);
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let cache = Arc::new(TokenCache::new(64 << 20));
        let local =
            LocalTokenizer::new(4, Some(PieceCache { cache: Arc::clone(&cache), metrics: Arc::clone(&metrics) }));
        let tokenization = Tokenization::new(local, None, cache, Arc::clone(&metrics));
        let tokenizer: Arc<dyn Tokenize> =
            if deferred { Arc::new(tokenization) } else { Arc::new(Whole(tokenization)) };
        let cfg = prefix_router::config::Config::default_routing().expect("default flags");
        Router::new(registry, tokenizer, cfg, metrics)
    };
    let chat = |g: usize, q: usize| {
        let system: String =
            (0..115).map(|i| format!("System prompt of group {g} clause {i} holds reusable context. ")).collect();
        let question: String =
            (0..7).map(|i| format!("Question {q} of group {g} clause {i} holds reusable context. ")).collect();
        let body = serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": question}]});
        parse(Endpoint::ChatCompletions, body.to_string().as_bytes()).expect("parses")
    };
    let (before, after) = (router(false), router(true));
    for r in [&before, &after] {
        for g in 0..8 {
            drop(r.route(&chat(g, 0)).await.expect("routed"));
        }
    }
    for gap_ms in [80u64, 0] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for q in 1..=60 {
            for (r, times) in [(&before, &mut a), (&after, &mut b)] {
                tokio::time::sleep(Duration::from_millis(gap_ms)).await;
                let req = chat(q % 8, q + 1000 * gap_ms as usize);
                let t = Instant::now();
                let d = r.route(&req).await.expect("routed");
                times.push(t.elapsed().as_secs_f64() * 1e6);
                drop(d);
            }
        }
        let stat = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v.iter().sum::<f64>() / v.len() as f64, v[v.len() * 9 / 10])
        };
        let ((am, a90), (bm, b90)) = (stat(&mut a), stat(&mut b));
        println!(
            "\nshared-prefix chat decisions (cached system prompt, new question), {gap_ms} ms apart, 60 each, alternating: \
             question tokenized before the decision mean {am:.0} µs / p90 {a90:.0} µs, after it (default) mean {bm:.0} µs / \
             p90 {b90:.0} µs ({:.1}× less).",
            am / bm.max(1e-9)
        );
    }
}

/// Local tokenization over the same kind of conversations, each with a ~1,000-token system
/// prompt: whole text every turn versus pieces between added tokens from the token cache. Once as
/// chats, once as completion prompts carrying the rendered template (a client that applies the
/// template itself). Both in this process, alternating, 5 rounds; the tokens are checked equal.
fn local_chat_pieces(tok_dir: &str) {
    use hf_chat::{ChatInput, HfTokenizer};
    use prefix_router::discovery::Model;
    use prefix_router::metrics::Metrics;
    use prefix_router::openai::{parse, Endpoint};
    use prefix_router::tokenizer::{LocalTokenizer, PieceCache, TokenCache};
    let tokenizer = Arc::new(HfTokenizer::from_dir(std::path::Path::new(tok_dir)).expect("tokenizer"));
    let system: String = (0..80).map(|i| format!("Rule {i}: answer about caches briefly. ")).collect();
    let (mut chats, mut completions) = (Vec::new(), Vec::new());
    for c in 0..10 {
        let mut msgs = vec![serde_json::json!({"role": "system", "content": system})];
        for t in 0..6 {
            let content: String = (0..12).map(|i| format!("Chat {c} turn {t} point {i} about caching. ")).collect();
            msgs.push(serde_json::json!({"role": "user", "content": content}));
            let body = serde_json::json!({"model": "m", "messages": msgs});
            chats.push(parse(Endpoint::ChatCompletions, body.to_string().as_bytes()).expect("parses"));
            let input = ChatInput::from_request(body.as_object().expect("object")).expect("chat input");
            let prompt = tokenizer.render_chat(&input).expect("renders");
            let body = serde_json::json!({"model": "m", "prompt": prompt}).to_string();
            completions.push(parse(Endpoint::Completions, body.as_bytes()).expect("parses"));
            msgs.push(serde_json::json!({"role": "assistant", "content": "Understood; noted."}));
        }
    }
    let model = Model { name: "m".into(), endpoints: vec![], tokenizer: Some(tokenizer) };
    for (what, turns) in [("chat", &chats), ("completion prompts in the template's tokens", &completions)] {
        let (mut whole_time, mut pieces_time) = (Duration::ZERO, Duration::ZERO);
        let mut tokens = 0;
        for _ in 0..5 {
            let whole = LocalTokenizer::new(4, None);
            let cache = Arc::new(TokenCache::new(64 << 20));
            let pieces =
                LocalTokenizer::new(4, Some(PieceCache { cache, metrics: Arc::new(Metrics::new().expect("m")) }));
            let t = Instant::now();
            let a: Vec<_> = turns.iter().map(|r| whole.tokenize_now(&model, r).expect("tokens")).collect();
            whole_time += t.elapsed();
            let t = Instant::now();
            let b: Vec<_> = turns.iter().map(|r| pieces.tokenize_now(&model, r).expect("tokens")).collect();
            pieces_time += t.elapsed();
            assert_eq!(a, b, "pieces must give the whole text's tokens");
            tokens = a.iter().map(|t| t.ids.len()).sum::<usize>();
        }
        let per_turn = |d: Duration| d.as_secs_f64() * 1e3 / (5 * turns.len()) as f64;
        println!(
            "\nlocal tokenization, {what}, 10 chats × 6 turns with a ~1,000-token system prompt ({tokens} tokens a \
             round, 5 rounds, tokens identical): whole text {:.2} ms a turn, cached pieces {:.2} ms a turn ({:.1}× less).",
            per_turn(whole_time),
            per_turn(pieces_time),
            whole_time.as_secs_f64() / pieces_time.as_secs_f64().max(1e-9)
        );
    }
}
