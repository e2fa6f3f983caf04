//! End to end through a real Envoy, in both ext_proc body modes, in front of the router and
//! `vllm-sim` pods: what a client and an operator would notice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{Cluster, Mode, Options};
use common::{client, metric, metric_where};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

fn user_turn(conversation: usize, turn: usize) -> String {
    // ~150 tokens each, different per conversation from the first word on.
    (0..12)
        .map(|s| format!("Conversation {conversation}, turn {turn}, point {s}: explain how block {s} of cache {conversation} is reused. "))
        .collect()
}

async fn chat(url: &str, messages: &[Value]) -> (String, Value) {
    let res = client()
        .post(url)
        .json(&json!({"model": "tiny-chat", "messages": messages, "max_tokens": 8}))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 200);
    let pod = res.headers()["x-sim-id"].to_str().expect("ascii").to_owned();
    (pod, res.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_turn_conversations_stay_on_their_first_pod_and_spread_over_pods() {
    for mode in Mode::ALL {
        let cluster = Cluster::start(mode, Options::default());
        let url = cluster.envoy.url("/v1/chat/completions");
        let convs: Vec<_> = (0..20)
            .map(|c| {
                let url = url.clone();
                tokio::spawn(async move {
                    let mut messages = Vec::new();
                    let mut turns = Vec::new();
                    for t in 0..5 {
                        messages.push(json!({"role": "user", "content": user_turn(c, t)}));
                        let (pod, body) = chat(&url, &messages).await;
                        let cached = body["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);
                        turns.push((pod, cached));
                        messages
                            .push(json!({"role": "assistant", "content": body["choices"][0]["message"]["content"]}));
                    }
                    turns
                })
            })
            .collect();
        let mut later = 0;
        let mut stuck = 0;
        let mut cached_later = 0;
        let mut first_pods: HashMap<String, usize> = HashMap::new();
        for c in convs {
            let turns = c.await.expect("conversation");
            *first_pods.entry(turns[0].0.clone()).or_default() += 1;
            for (pod, cached) in &turns[1..] {
                later += 1;
                stuck += usize::from(*pod == turns[0].0);
                cached_later += usize::from(*cached > 0);
            }
        }
        assert!(stuck * 100 >= later * 95, "{mode:?}: {stuck}/{later} later turns on the first pod");
        assert!(cached_later * 100 >= later * 95, "{mode:?}: {cached_later}/{later} later turns hit the sim's cache");
        let busiest = first_pods.values().max().copied().unwrap_or(0);
        assert!(busiest <= 10, "{mode:?}: a pod got {busiest} of 20 conversations: {first_pods:?}");
        let m = cluster.router_metrics().await;
        assert!(metric_where(&m, "prefix_router_decisions_total", "outcome=\"prefix_hit\"") >= 76.0, "{m}");
    }
}

async fn error_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    assert_eq!(res.headers()["content-type"], "application/json", "status {status}");
    let body: Value = res.json().await.expect("json error body");
    for key in ["message", "type", "code"] {
        assert!(body["error"][key].is_string(), "{body}");
    }
    assert!(body["error"]["param"].is_null());
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_get_openai_errors_with_the_right_status() {
    for mode in Mode::ALL {
        let cluster = Cluster::start(
            mode,
            Options {
                sims: 1,
                router_args: &["--max-body-bytes", "200000"],
                extra_models: "  - name: empty-model\n    endpoints: []\n",
                ..Options::default()
            },
        );
        let url = cluster.envoy.url("/v1/completions");
        let http = client();
        let send = |body: String| http.post(&url).header("content-type", "application/json").body(body).send();

        let (s, b) = error_of(send("{\"model\": ".into()).await.expect("sent")).await;
        assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_json")), "{mode:?}");
        let (s, b) = error_of(send(json!({"prompt": "hi"}).to_string()).await.expect("sent")).await;
        assert_eq!((s, b["error"]["code"].as_str()), (400, Some("missing_model")), "{mode:?}");
        let (s, _) = error_of(send(json!({"model": "tiny-chat", "prompt": ""}).to_string()).await.expect("sent")).await;
        assert_eq!(s, 400, "{mode:?}: empty prompt");
        let (s, b) = error_of(send(json!({"model": "gpt-9", "prompt": "hi"}).to_string()).await.expect("sent")).await;
        assert_eq!(s, 404, "{mode:?}");
        assert!(b["error"]["message"].as_str().is_some_and(|m| m.contains("gpt-9")));
        let (s, _) =
            error_of(send(json!({"model": "empty-model", "prompt": "hi"}).to_string()).await.expect("sent")).await;
        assert_eq!(s, 503, "{mode:?}");

        let big = json!({"model": "tiny-chat", "prompt": "x".repeat(300_000)}).to_string();
        let (s, _) = error_of(send(big.clone()).await.expect("sent")).await;
        assert_eq!(s, 413, "{mode:?}: with content-length");
        if mode == Mode::FullDuplex {
            // Chunked, no content-length: the limit is enforced as the body streams in.
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                big.into_bytes().chunks(50_000).map(|c| Ok(c.to_vec())).collect();
            let res = http.post(&url).body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))).send().await;
            let (s, _) = error_of(res.expect("sent")).await;
            assert_eq!(s, 413, "chunked");
        }
        let m = cluster.router_metrics().await;
        assert!(metric_where(&m, "prefix_router_rejections_total", "status=\"413\"") >= 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_supplied_destination_never_reaches_its_target() {
    let canary = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = canary.local_addr().expect("addr").to_string();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&reached);
    tokio::spawn(async move {
        while let Ok((_conn, _)) = canary.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    for mode in Mode::ALL {
        let cluster = Cluster::start(mode, Options { sims: 2, ..Options::default() });
        let http = client();
        for header in ["x-gateway-destination-endpoint", "X-Gateway-Destination-Endpoint"] {
            let res = http
                .post(cluster.envoy.url("/v1/completions"))
                .header(header, &target)
                .json(&json!({"model": "tiny-chat", "prompt": "hello there", "max_tokens": 1}))
                .send()
                .await
                .expect("sent");
            assert_eq!(res.status(), 200, "{mode:?}");
            assert!(res.headers()["x-sim-id"].to_str().is_ok_and(|s| s.starts_with("sim-")));
            let res = http.get(cluster.envoy.url("/v1/models")).header(header, &target).send().await.expect("sent");
            assert_eq!(res.status(), 200, "{mode:?}: a bodiless request is routed on load");
            assert!(res.headers().contains_key("x-sim-id"));
            let res = http
                .post(cluster.envoy.url("/v1/completions"))
                .header(header, &target)
                .json(&json!({"model": "nope", "prompt": "x"}))
                .send()
                .await
                .expect("sent");
            assert_eq!(res.status(), 404);
        }
    }
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0, "the client's header reached {target}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_arrive_byte_identical_and_streams_release_inflight() {
    for mode in Mode::ALL {
        let cluster = Cluster::start(
            mode,
            Options {
                sim_args: &["--max-model-len", "400000", "--num-gpu-blocks", "30000", "--prefill-us-per-token", "0"],
                ..Options::default()
            },
        );
        // ~1 MB of token ids: large, and cheap for both sides to read.
        let ids: Vec<u32> = (0..180_000u32).map(|i| 1000 + (i * 7919) % 100_000).collect();
        let body = json!({"model": "tiny-chat", "prompt": ids, "max_tokens": 1}).to_string();
        assert!(body.len() > 1_000_000);
        let res = client().post(cluster.envoy.url("/v1/completions")).body(body.clone()).send().await.expect("sent");
        assert_eq!(res.status(), 200, "{mode:?}");
        assert_eq!(res.headers()["x-sim-body-bytes"].to_str().ok(), Some(body.len().to_string().as_str()));
        let want = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(body.as_bytes()));
        assert_eq!(
            res.headers()["x-sim-body-xxh3"].to_str().ok(),
            Some(want.as_str()),
            "{mode:?}: body changed on the way"
        );

        // SSE passes through whole.
        let stream = json!({"model": "tiny-chat", "prompt": "stream please", "max_tokens": 20, "stream": true});
        let text = client()
            .post(cluster.envoy.url("/v1/completions"))
            .json(&stream)
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("body");
        assert!(text.ends_with("data: [DONE]\n\n"), "{mode:?}");
        assert_eq!(text.matches("data: {").count(), 20);

        // Long streams: counted while running, released when done or when the client leaves.
        let long = json!({"model": "tiny-chat", "prompt": "a long story", "max_tokens": 2000, "stream": true});
        let mut open = Vec::new();
        for _ in 0..3 {
            let mut res = client().post(cluster.envoy.url("/v1/completions")).json(&long).send().await.expect("sent");
            res.chunk().await.expect("first chunk");
            open.push(res);
        }
        let m = cluster.router_metrics().await;
        assert_eq!(metric(&m, "prefix_router_inflight_requests"), 3.0, "{mode:?}: three streams in flight");
        drop(open);
        let mut left = f64::NAN;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = metric(&cluster.router_metrics().await, "prefix_router_inflight_requests");
            if left == 0.0 {
                break;
            }
        }
        assert_eq!(left, 0.0, "{mode:?}: in-flight counts return to zero after clients disconnect");
        for sim in &cluster.sims {
            let text = client().get(sim.url("/metrics")).send().await.expect("m").text().await.expect("t");
            assert_eq!(metric(&text, "vllm:num_requests_running"), 0.0, "the sims stopped generating too");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pod_costs_no_request_then_its_conversations_move_and_it_returns_when_back() {
    for mode in Mode::ALL {
        // The examples' wiring: a fallback pod in the header, Envoy retrying a refused connection
        // on the header's next address.
        let opts = Options { router_args: &["--fallback-endpoints", "1"], ..Options::default() };
        let mut cluster = Cluster::start(mode, opts);
        let url = cluster.envoy.url("/v1/chat/completions");
        let messages = vec![json!({"role": "user", "content": user_turn(99, 0)})];
        let (first, _) = chat(&url, &messages).await;
        let victim = Cluster::sim_index(&first);
        let addr = cluster.sims[victim].addr;
        // SIGKILL: no goodbye, discovery (the endpoints file) still lists it.
        drop(cluster.sims.remove(victim));
        let mut failed = 0;
        let mut served_by = Vec::new();
        for _ in 0..10 {
            let res = client()
                .post(&url)
                .json(&json!({"model": "tiny-chat", "messages": messages, "max_tokens": 4}))
                .send()
                .await
                .expect("request");
            assert!(
                !res.headers().contains_key("x-gateway-destination-endpoint-served"),
                "{mode:?}: pod addresses stay between Envoy and the router"
            );
            if res.status() == 200 {
                served_by.push(res.headers()["x-sim-id"].to_str().expect("ascii").to_owned());
            } else {
                failed += 1;
            }
        }
        eprintln!("{mode:?}: {failed} of 10 requests failed after the kill, then {served_by:?}");
        assert_eq!(failed, 0, "{mode:?}: nothing was in flight to the killed pod, so no request fails");
        assert!(
            served_by.windows(2).all(|w| w[0] == w[1]),
            "{mode:?}: the conversation settles on one pod: {served_by:?}"
        );
        let m = cluster.router_metrics().await;
        assert!(metric(&m, "prefix_router_endpoint_ejections_total") >= 1.0, "{mode:?}: the ejection is counted");
        assert_eq!(metric(&m, "prefix_router_endpoints_ejected"), 1.0, "{mode:?}");
        assert!(
            metric_where(&m, "prefix_router_served_reports_total", "mismatch") >= 1.0,
            "{mode:?}: Envoy's report that the fallback served is what moved the conversation"
        );
        // Back on the same address: a probe passes and the pod is routable again.
        let _back = common::procs::sim_at(addr.port(), &["--id", &first]);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let m = cluster.router_metrics().await;
            if metric(&m, "prefix_router_endpoints_ejected") == 0.0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{mode:?}: the pod came back within 5 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reports_not_ready_serves_through_the_drain_and_lets_open_streams_finish() {
    let cluster = Cluster::start(
        Mode::FullDuplex,
        Options {
            sim_args: &["--decode-ms-per-token", "50"],
            router_args: &["--drain-period", "1s", "--shutdown-grace", "5s"],
            ..Options::default()
        },
    );
    let url = cluster.envoy.url("/v1/completions");
    let admin =
        cluster.router.line.split_whitespace().find_map(|w| w.strip_prefix("admin=")).expect("admin").to_owned();
    // A streamed response of 40 tokens (~2 s) is under way when SIGTERM arrives.
    let long = {
        let url = url.clone();
        tokio::spawn(async move {
            let body = json!({"model": "tiny-chat", "prompt": "a long answer", "max_tokens": 40, "stream": true});
            let res = client().post(&url).json(&body).send().await.expect("request");
            let status = res.status().as_u16();
            (status, res.text().await.expect("body"))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = cluster.router.child.id().to_string();
    let sent = std::time::Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = client().get(format!("{admin}/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 503, "not ready once SIGTERM arrived");
    // New requests during the drain period are still routed and answered.
    for i in 0..5 {
        let body = json!({"model": "tiny-chat", "prompt": format!("during the drain {i}"), "max_tokens": 1});
        let res = client().post(&url).json(&body).send().await.expect("request");
        assert_eq!(res.status(), 200, "request {i} during the drain");
    }
    let (status, text) = long.await.expect("joined");
    assert_eq!(status, 200);
    assert!(text.trim_end().ends_with("data: [DONE]"), "the open stream finished: {text}");
    // The process exits on its own, well within 20 s.
    let mut child = cluster.router;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if child.child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "exited within 15 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("router exited {:?} after SIGTERM", sent.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_receipt_comes_back_through_envoy_and_sits_in_the_decision_ring() {
    for mode in Mode::ALL {
        let opts = Options { router_args: &["--receipt-header", "x-route-receipt"], ..Options::default() };
        let cluster = Cluster::start(mode, opts);
        let url = cluster.envoy.url("/v1/chat/completions");
        let body = json!({"model": "tiny-chat", "max_tokens": 2,
            "messages": [{"role": "user", "content": "a private question about the quarterly numbers, told in full"}]});
        let mut receipts = Vec::new();
        for _ in 0..2 {
            let res = client().post(&url).header("x-route-receipt", "1").json(&body).send().await.expect("request");
            assert_eq!(res.status(), 200);
            let sim = Cluster::sim_index(res.headers()["x-sim-id"].to_str().expect("ascii"));
            let receipt: Value =
                serde_json::from_slice(res.headers()["x-route-receipt"].as_bytes()).expect("receipt is JSON");
            assert_eq!(receipt["chosen"], cluster.sims[sim].addr.to_string(), "{mode:?}: names the pod that served");
            receipts.push(receipt);
        }
        assert_eq!(receipts[0]["outcome"], "miss", "{mode:?}: {}", receipts[0]);
        // One router sends the pods all their requests: `--placement auto` places for balance.
        assert_eq!(receipts[0]["placement"], "cost", "{mode:?}");
        assert_eq!(receipts[1]["outcome"], "prefix_hit", "{mode:?}: {}", receipts[1]);
        let res = client().post(&url).json(&body).send().await.expect("request");
        assert!(!res.headers().contains_key("x-route-receipt"), "{mode:?}: only for clients that ask");
        let ring = client().get(cluster.router.url("/debug/decisions")).send().await.expect("ring");
        let text = ring.text().await.expect("text");
        assert!(!text.contains("quarterly") && !text.contains("private"), "{mode:?}: no prompt text in the ring");
        let ring: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(ring["decisions"].as_array().map(Vec::len), Some(3), "{mode:?}: every decision, newest first");
        assert_eq!(ring["decisions"][1], receipts[1], "{mode:?}: the header and the ring say the same");
    }
}
