//! The stream state machine in-process: messages in the order Envoy sends them, answers read off
//! the channel `stream::run` writes to. Covers at the protocol level what the Envoy tests cover
//! through a real proxy (both body modes, a repeated end-of-stream, trailers, header-only
//! requests, errors, sanitization), in milliseconds.

use super::*;
use crate::testkit::{kit, routing_config, spec, Kit};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, processing_request::Request, processing_response::Response, CommonResponse, HttpBody,
    HttpHeaders, HttpTrailers, ProtocolConfiguration,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;

const HEADER: &str = "x-gateway-destination-endpoint";

/// Headers as Envoy sends them: values in `raw_value`.
fn header_map(hs: &[(&str, &str)]) -> Option<HeaderMap> {
    let headers = hs
        .iter()
        .map(|(k, v)| HeaderValue { key: (*k).into(), raw_value: v.as_bytes().to_vec(), ..Default::default() })
        .collect();
    Some(HeaderMap { headers })
}

fn headers(path: &str, end_of_stream: bool, mode: BodySendMode, extra: &[(&str, &str)]) -> ProcessingRequest {
    let mut hs = vec![(":method", "POST"), (":path", path)];
    hs.extend_from_slice(extra);
    ProcessingRequest {
        protocol_config: Some(ProtocolConfiguration { request_body_mode: mode as i32, ..Default::default() }),
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: header_map(&hs),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::RequestBody(HttpBody { body: bytes.to_vec(), end_of_stream, ..Default::default() })),
        ..Default::default()
    }
}

fn trailers() -> ProcessingRequest {
    ProcessingRequest { request: Some(Request::RequestTrailers(HttpTrailers::default())), ..Default::default() }
}

/// Runs one stream over `msgs` to its end and returns every answer.
async fn exchange(k: &Kit, mode: BodyMode, msgs: Vec<ProcessingRequest>) -> Vec<ProcessingResponse> {
    let (tx, mut rx) = mpsc::channel(64);
    let inbound = futures::stream::iter(msgs.into_iter().map(Ok::<_, Status>));
    run(k.context(mode, 1 << 20), inbound, tx).await;
    let mut out = Vec::new();
    while let Ok(r) = rx.try_recv() {
        out.push(r.expect("no gRPC error"));
    }
    out
}

fn common(r: &ProcessingResponse) -> Option<&CommonResponse> {
    match &r.response {
        Some(Response::RequestHeaders(h)) => h.response.as_ref(),
        Some(Response::RequestBody(b)) => b.response.as_ref(),
        _ => None,
    }
}

fn destination(r: &ProcessingResponse) -> Option<String> {
    let set = common(r)?.header_mutation.as_ref()?.set_headers.first()?;
    let h = set.header.as_ref()?;
    (h.key == HEADER).then(|| String::from_utf8_lossy(&h.raw_value).into_owned())
}

fn removes_destination(r: &ProcessingResponse) -> bool {
    common(r).and_then(|c| c.header_mutation.as_ref()).is_some_and(|m| m.remove_headers.iter().any(|h| h == HEADER))
}

fn streamed(r: &ProcessingResponse) -> Option<(usize, bool)> {
    match common(r)?.body_mutation.as_ref()?.mutation.as_ref()? {
        Mutation::StreamedResponse(s) => Some((s.body.len(), s.end_of_stream)),
        _ => None,
    }
}

fn status(r: &ProcessingResponse) -> Option<(i32, serde_json::Value)> {
    let Some(Response::ImmediateResponse(i)) = &r.response else { return None };
    Some((i.status.as_ref()?.code, serde_json::from_slice(&i.body).ok()?))
}

fn completion(prompt: &str) -> Vec<u8> {
    serde_json::json!({"model": "m", "prompt": prompt}).to_string().into_bytes()
}

#[tokio::test]
async fn full_duplex_answers_only_after_the_body_and_ignores_a_repeated_end_of_stream() {
    let k = kit(vec![spec("m", 2)], routing_config());
    let payload = completion(&"x".repeat(150_000));
    let (a, b) = payload.split_at(70_000);
    let out = exchange(
        &k,
        BodyMode::Auto,
        vec![
            headers("/v1/completions", false, BodySendMode::FullDuplexStreamed, &[(HEADER, "6.6.6.6:1")]),
            body(a, false),
            body(b, true),
            body(b"", true),
        ],
    )
    .await;
    assert!(matches!(out[0].response, Some(Response::RequestHeaders(_))), "headers response first");
    let dest = destination(&out[0]).expect("a destination");
    assert!(dest.starts_with("10.0.0."), "{dest}");
    assert!(out[0].dynamic_metadata.is_some(), "envoy.lb metadata");
    let chunks: Vec<(usize, bool)> = out[1..].iter().map(|r| streamed(r).expect("streamed body")).collect();
    assert_eq!(chunks.iter().map(|c| c.0).sum::<usize>(), payload.len(), "the body goes back whole");
    assert!(chunks.iter().all(|c| c.0 <= MAX_CHUNK));
    assert_eq!(chunks.iter().filter(|c| c.1).count(), 1, "end_of_stream once: {chunks:?}");
    assert!(chunks.last().is_some_and(|c| c.1));
}

#[tokio::test]
async fn buffered_strips_a_client_destination_then_decides_in_the_body_response() {
    let k = kit(vec![spec("m", 2)], routing_config());
    let out = exchange(
        &k,
        BodyMode::Auto,
        vec![
            headers("/v1/completions", false, BodySendMode::Buffered, &[(HEADER, "6.6.6.6:1")]),
            body(&completion("hello there"), true),
        ],
    )
    .await;
    assert_eq!(out.len(), 2);
    assert!(removes_destination(&out[0]), "the client's header is removed at once");
    assert!(destination(&out[0]).is_none());
    assert!(matches!(out[1].response, Some(Response::RequestBody(_))));
    assert!(destination(&out[1]).is_some_and(|d| d.starts_with("10.0.0.")));
    assert!(common(&out[1]).is_some_and(|c| c.clear_route_cache));
}

#[tokio::test]
async fn trailers_end_a_full_duplex_body_and_get_their_own_answer() {
    let k = kit(vec![spec("m", 2)], routing_config());
    let out = exchange(
        &k,
        BodyMode::FullDuplex,
        vec![
            headers("/v1/completions", false, BodySendMode::FullDuplexStreamed, &[]),
            body(&completion("hi"), false),
            trailers(),
        ],
    )
    .await;
    assert!(destination(&out[0]).is_some());
    assert_eq!(streamed(&out[1]), Some((completion("hi").len(), false)), "body handed back without end_of_stream");
    assert!(matches!(out.last().and_then(|r| r.response.as_ref()), Some(Response::RequestTrailers(_))));
}

#[tokio::test]
async fn a_header_only_request_is_routed_at_once_in_either_mode() {
    let k = kit(vec![spec("m", 2)], routing_config());
    for mode in [BodySendMode::Buffered, BodySendMode::FullDuplexStreamed] {
        let out = exchange(&k, BodyMode::Auto, vec![headers("/v1/models", true, mode, &[])]).await;
        assert_eq!(out.len(), 1, "{mode:?}");
        assert!(destination(&out[0]).is_some(), "{mode:?}");
    }
}

#[tokio::test]
async fn errors_are_openai_json_with_the_right_status_in_both_modes() {
    let k = kit(vec![spec("m", 2)], routing_config());
    let cases: [(&[u8], i32, &str); 4] = [
        (b"{not json", 400, "invalid_json"),
        (br#"{"prompt": "no model"}"#, 400, "missing_model"),
        (br#"{"model": "other", "prompt": "x"}"#, 404, "model_not_found"),
        (br#"{"model": "m"}"#, 400, "invalid_request"),
    ];
    for mode in [BodySendMode::Buffered, BodySendMode::FullDuplexStreamed] {
        for (payload, code, kind) in cases {
            let out =
                exchange(&k, BodyMode::Auto, vec![headers("/v1/completions", false, mode, &[]), body(payload, true)])
                    .await;
            let (got, json) = out.iter().find_map(status).unwrap_or_else(|| panic!("{mode:?} {kind}: {out:?}"));
            assert_eq!((got, json["error"]["code"].as_str()), (code, Some(kind)), "{mode:?}");
            assert!(out.iter().all(|r| destination(r).is_none()), "no destination with an error");
        }
    }
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_by_content_length_or_by_size() {
    let k = kit(vec![spec("m", 2)], routing_config());
    let out = exchange(
        &k,
        BodyMode::Auto,
        vec![headers("/v1/completions", false, BodySendMode::Buffered, &[("content-length", "99999999")])],
    )
    .await;
    assert_eq!(out.iter().find_map(status).map(|s| s.0), Some(413));
    let big = vec![b'x'; (1 << 20) + 1];
    let out = exchange(
        &k,
        BodyMode::Auto,
        vec![
            headers("/v1/completions", false, BodySendMode::FullDuplexStreamed, &[]),
            body(&big, false),
            body(b"}", true),
        ],
    )
    .await;
    assert_eq!(out.iter().filter_map(status).map(|s| s.0).collect::<Vec<_>>(), vec![413], "answered once");
}

#[tokio::test]
async fn the_in_flight_count_lasts_as_long_as_the_stream() {
    let k = kit(vec![spec("m", 1)], routing_config());
    let (tx_in, rx_in) = mpsc::channel::<Result<ProcessingRequest, Status>>(8);
    let (tx, mut rx) = mpsc::channel(8);
    let task =
        tokio::spawn(run(k.context(BodyMode::Auto, 1 << 20), tokio_stream::wrappers::ReceiverStream::new(rx_in), tx));
    tx_in.send(Ok(headers("/v1/completions", false, BodySendMode::Buffered, &[]))).await.expect("send");
    tx_in.send(Ok(body(&completion("hi"), true))).await.expect("send");
    let _ = rx.recv().await;
    let _ = rx.recv().await;
    let pod = std::sync::Arc::clone(&k.registry.snapshot().models["m"].endpoints[0]);
    assert_eq!(pod.inflight(), 1, "counted while the response is under way");
    drop(tx_in);
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stream ends").expect("no panic");
    assert_eq!(pod.inflight(), 0, "released when the stream ends");
}

fn failing(
    k: &Kit,
    mode: BodySendMode,
    before: Vec<ProcessingRequest>,
    error: Status,
) -> impl std::future::Future<Output = Vec<ProcessingResponse>> + '_ {
    let msgs: Vec<Result<ProcessingRequest, Status>> = before.into_iter().map(Ok).chain([Err(error)]).collect();
    let _ = mode;
    async move {
        let (tx, mut rx) = mpsc::channel(64);
        run(k.context(BodyMode::Auto, 1 << 20), futures::stream::iter(msgs), tx).await;
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(r.expect("no gRPC error"));
        }
        out
    }
}

#[tokio::test]
async fn a_stream_error_before_the_decision_is_answered_never_passed_through() {
    let k = kit(vec![spec("m", 2)], routing_config());
    let spoof = [(HEADER, "6.6.6.6:1")];
    for mode in [BodySendMode::Buffered, BodySendMode::FullDuplexStreamed] {
        let cases = [
            (Status::out_of_range("decoded message length too large"), 413),
            (Status::internal("failed to decode Protobuf message"), 400),
            (Status::cancelled("reset"), 400),
        ];
        for (error, code) in cases {
            let before = vec![headers("/v1/completions", false, mode, &spoof), body(b"{\"model\":", false)];
            let out = failing(&k, mode, before, error.clone()).await;
            let statuses: Vec<i32> = out.iter().filter_map(status).map(|s| s.0).collect();
            assert_eq!(statuses, vec![code], "{mode:?} {error:?}: {out:?}");
            assert!(out.iter().all(|r| destination(r).is_none()), "never a destination");
        }
        // Envoy half-closes before the body ended: answered too.
        let out =
            exchange(&k, BodyMode::Auto, vec![headers("/v1/completions", false, mode, &spoof), body(b"{", false)])
                .await;
        assert_eq!(out.iter().filter_map(status).map(|s| s.0).collect::<Vec<_>>(), vec![400], "{mode:?}");
    }
    // After the decision, a reset is the normal end of a request: nothing more is sent.
    let before = vec![headers("/v1/completions", false, BodySendMode::Buffered, &[]), body(&completion("hi"), true)];
    let out = failing(&k, BodySendMode::Buffered, before, Status::cancelled("reset")).await;
    assert!(out.iter().all(|r| status(r).is_none()), "{out:?}");
}

#[tokio::test]
async fn body_mode_none_with_several_models_refuses_rather_than_guess_the_model() {
    let k = kit(vec![spec("m", 2), spec("other", 2)], routing_config());
    let out = exchange(&k, BodyMode::Auto, vec![headers("/v1/completions", false, BodySendMode::None, &[])]).await;
    assert_eq!(out.iter().find_map(status).map(|s| s.0), Some(500));
    let single = kit(vec![spec("m", 2)], routing_config());
    let out = exchange(&single, BodyMode::Auto, vec![headers("/v1/completions", false, BodySendMode::None, &[])]).await;
    assert!(destination(&out[0]).is_some(), "one model: its pods are the only choice");
}

#[tokio::test]
async fn buffered_with_trailers_decides_when_the_trailers_end_the_body() {
    let k = kit(vec![spec("m", 2)], routing_config());
    let out = exchange(
        &k,
        BodyMode::Auto,
        vec![
            headers("/v1/completions", false, BodySendMode::Buffered, &[]),
            body(&completion("hi"), false),
            trailers(),
        ],
    )
    .await;
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(out.iter().all(|r| status(r).is_none()), "not a 413: {out:?}");
    assert!(matches!(out[1].response, Some(Response::RequestBody(_))) && destination(&out[1]).is_some());
    assert!(matches!(out[2].response, Some(Response::RequestTrailers(_))));
}

#[tokio::test]
async fn the_response_body_is_answered_in_the_response_s_own_mode() {
    let k = kit(vec![spec("m", 2)], routing_config());
    let mut first = headers("/v1/completions", false, BodySendMode::Buffered, &[]);
    if let Some(pc) = first.protocol_config.as_mut() {
        pc.response_body_mode = BodySendMode::FullDuplexStreamed as i32;
    }
    let response_body = ProcessingRequest {
        request: Some(Request::ResponseBody(HttpBody {
            body: b"data: x".to_vec(),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    };
    let out = exchange(&k, BodyMode::Auto, vec![first, body(&completion("hi"), true), response_body]).await;
    let last = out.last().expect("an answer");
    let Some(Response::ResponseBody(b)) = &last.response else { panic!("{last:?}") };
    let mutation = b.response.as_ref().and_then(|c| c.body_mutation.as_ref()).and_then(|m| m.mutation.as_ref());
    assert!(matches!(mutation, Some(Mutation::StreamedResponse(s)) if s.body == b"data: x" && s.end_of_stream));
}

fn response_headers(status: &str, from_upstream: bool) -> ProcessingRequest {
    let mut hs = vec![(":status", status)];
    if from_upstream {
        hs.push(("x-envoy-upstream-service-time", "3"));
    }
    ProcessingRequest {
        request: Some(Request::ResponseHeaders(HttpHeaders { headers: header_map(&hs), ..Default::default() })),
        ..Default::default()
    }
}

#[tokio::test]
async fn envoy_s_own_503_takes_the_pod_out_of_routing_and_the_pod_s_own_does_not() {
    let k = kit(vec![spec("m", 2)], routing_config());
    let routed = |from_upstream| {
        vec![
            headers("/v1/completions", false, BodySendMode::Buffered, &[]),
            body(&completion("hello there, a long enough prompt"), true),
            response_headers("503", from_upstream),
        ]
    };
    let out = exchange(&k, BodyMode::Auto, routed(true)).await;
    let pod = destination(&out[1]).expect("routed");
    let snap = k.registry.snapshot();
    assert!(snap.endpoints().all(|e| e.is_routable()), "a 503 from vLLM itself is an answer, not death");
    let out = exchange(&k, BodyMode::Auto, routed(false)).await;
    let dead = destination(&out[1]).expect("routed");
    assert_eq!(dead, pod, "the conversation's pod");
    assert!(snap.endpoints().any(|e| !e.is_routable() && e.addr.to_string() == dead), "ejected");
    for _ in 0..4 {
        let out = exchange(&k, BodyMode::Auto, routed(true)).await;
        assert_ne!(destination(&out[1]).expect("routed"), dead, "the conversation moved");
    }
    assert_eq!(k.metrics.endpoint_ejections.with_label_values(&["upstream_unreachable"]).get(), 1);
}

/// Response headers from the pod with the proxy's GIE served-endpoint report in `envoy.lb`.
fn served_report(addr: &str) -> ProcessingRequest {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let served = Value { kind: Some(Kind::StringValue(addr.into())) };
    let lb = Struct { fields: [(format!("{HEADER}-served"), served)].into() };
    let mut r = response_headers("200", true);
    r.metadata_context = Some(Metadata { filter_metadata: [("envoy.lb".to_owned(), lb)].into(), ..Default::default() });
    r
}

#[tokio::test]
async fn a_served_report_naming_another_pod_moves_the_conversation_there_and_the_header_never_leaks() {
    let k = kit(vec![spec("m", 3)], routing_config());
    let prompt = completion("a conversation whose pod is about to fail its connection");
    let routed = |report: Option<&str>| {
        let mut msgs = vec![headers("/v1/completions", false, BodySendMode::Buffered, &[]), body(&prompt, true)];
        msgs.extend(report.map(served_report));
        msgs
    };
    let out = exchange(&k, BodyMode::Auto, routed(None)).await;
    let first = destination(&out[1]).expect("routed");
    let out = exchange(&k, BodyMode::Auto, routed(Some(&first))).await;
    assert_eq!(destination(&out[1]).as_deref(), Some(first.as_str()), "sticky");
    let Some(Response::ResponseHeaders(h)) = &out[2].response else { panic!("{:?}", out[2]) };
    let removed = h.response.as_ref().and_then(|c| c.header_mutation.as_ref()).map(|m| m.remove_headers.clone());
    assert_eq!(removed, Some(vec![format!("{HEADER}-served")]), "clients never see pod addresses");
    assert_eq!(k.metrics.served_reports.with_label_values(&["match"]).get(), 1);

    // The proxy could not use the primary and served the request from another pod.
    let other = if first == "10.0.0.1:8000" { "10.0.0.2:8000" } else { "10.0.0.1:8000" };
    let out = exchange(&k, BodyMode::Auto, routed(Some(other))).await;
    assert_eq!(destination(&out[1]).as_deref(), Some(first.as_str()));
    assert_eq!(k.metrics.served_reports.with_label_values(&["mismatch"]).get(), 1);
    assert_eq!(k.metrics.endpoint_ejections.with_label_values(&["served_elsewhere"]).get(), 1);
    for _ in 0..3 {
        let out = exchange(&k, BodyMode::Auto, routed(None)).await;
        assert_eq!(destination(&out[1]).as_deref(), Some(other), "the conversation follows the pod that served it");
    }
}

fn receipt_header(r: &ProcessingResponse) -> Option<serde_json::Value> {
    let Some(Response::ResponseHeaders(h)) = &r.response else { return None };
    let set = h.response.as_ref()?.header_mutation.as_ref()?.set_headers.first()?.header.as_ref()?;
    (set.key == "x-route-receipt").then(|| serde_json::from_slice(&set.raw_value).expect("receipt JSON"))
}

#[tokio::test]
async fn a_client_that_asks_gets_a_receipt_naming_the_pod_and_why_and_nothing_of_the_prompt() {
    let k = kit(vec![spec("m", 3)], routing_config());
    let prompt = "the secret system prompt of a tenant, long enough for several blocks";
    for mode in [BodySendMode::Buffered, BodySendMode::FullDuplexStreamed] {
        let ask = |wants: bool| {
            let extra: &[(&str, &str)] = if wants { &[("x-route-receipt", "1")] } else { &[] };
            vec![
                headers("/v1/completions", false, mode, extra),
                body(&completion(prompt), true),
                response_headers("200", true),
            ]
        };
        let out = exchange(&k, BodyMode::Auto, ask(true)).await;
        let pod = out.iter().find_map(destination).expect("routed");
        let receipt = out.iter().find_map(receipt_header).expect("a receipt");
        let text = receipt.to_string();
        assert!(!text.contains("secret") && !text.contains("tenant"), "{mode:?}: no prompt text: {text}");
        assert!(text.len() < 1024, "{mode:?}: bounded: {} bytes", text.len());
        assert_eq!(receipt["chosen"], pod.as_str(), "{mode:?}");
        assert_eq!(receipt["model"], "m");
        let cands = receipt["candidates"].as_array().expect("candidates");
        assert_eq!(cands.len(), 3, "{mode:?}: every pod of three is listed");
        let chosen = cands.iter().find(|c| c["pod"] == pod.as_str()).expect("the chosen pod is listed");
        let blocks = receipt["prompt_blocks"].as_u64().expect("prompt blocks");
        assert!(blocks > 0);
        if mode == BodySendMode::FullDuplexStreamed {
            // Second time round the pod holds the prompt: the receipt says so, with the cost terms.
            assert_eq!(receipt["outcome"], "prefix_hit", "{receipt}");
            assert_eq!(chosen["matched_blocks"].as_u64(), Some(blocks));
            assert_eq!(chosen["prefix_cost"].as_f64(), Some(0.0));
            assert_eq!(chosen["trust"], "history");
        }
        let out = exchange(&k, BodyMode::Auto, ask(false)).await;
        assert!(out.iter().all(|r| receipt_header(r).is_none()), "{mode:?}: only for clients that ask");
    }
    let ring = k.router.receipts(10);
    assert_eq!(ring.len(), 4, "every decision is in the ring, newest first");
}

/// Request headers carrying GIE's subset hint in `envoy.lb.subset_hint`.
fn headers_with_subset(mode: BodySendMode, subset: &[&str]) -> ProcessingRequest {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
    let list =
        ListValue { values: subset.iter().map(|s| Value { kind: Some(Kind::StringValue((*s).into())) }).collect() };
    let hint = Struct { fields: [(format!("{HEADER}-subset"), Value { kind: Some(Kind::ListValue(list)) })].into() };
    let mut h = headers("/v1/completions", false, mode, &[]);
    h.metadata_context =
        Some(Metadata { filter_metadata: [("envoy.lb.subset_hint".to_owned(), hint)].into(), ..Default::default() });
    h
}

#[tokio::test]
async fn the_subset_hint_limits_the_pick_and_an_empty_or_foreign_subset_is_a_503() {
    let k = kit(vec![spec("m", 4)], routing_config());
    for mode in [BodySendMode::Buffered, BodySendMode::FullDuplexStreamed] {
        for i in 0..8 {
            let prompt = completion(&format!("prompt number {i} for the subset"));
            let allowed = ["10.0.0.2:8000", "10.0.0.4:8000"];
            let out =
                exchange(&k, BodyMode::Auto, vec![headers_with_subset(mode, &allowed), body(&prompt, true)]).await;
            let dest = out.iter().find_map(destination).expect("routed");
            assert!(allowed.contains(&dest.as_str()), "{mode:?}: {dest} is outside the subset");
        }
        for subset in [&[][..], &["10.9.9.9:8000"][..]] {
            let out = exchange(
                &k,
                BodyMode::Auto,
                vec![headers_with_subset(mode, subset), body(&completion("anything at all"), true)],
            )
            .await;
            assert_eq!(out.iter().find_map(status).map(|s| s.0), Some(503), "{mode:?}: subset {subset:?}");
        }
    }
}
