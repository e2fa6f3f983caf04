//! The Envoy Gateway overlay, through a real Envoy configured the way Envoy Gateway v1.9 renders
//! it: the ext_proc processing modes, message timeout and fail-open setting read from
//! `deploy/overlays/envoy-gateway/extension-policy.yaml`, the endpoint-override header and retry from
//! its BackendTrafficPolicy, and Envoy Gateway's default 32 KiB per-connection buffer (DESIGN §8).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{free_port, grpc_addr, router, Envoy};
use common::procs::{self, Proc};
use common::{client, fixture_dir, metric};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn overlay(file: &str) -> serde_yaml::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/overlays/envoy-gateway").join(file);
    serde_yaml::from_str(&std::fs::read_to_string(&path).expect("overlay file")).expect("YAML")
}

/// Envoy Gateway's processing-mode names → Envoy's.
fn body_mode(eg: Option<&str>) -> &'static str {
    match eg {
        None => "NONE",
        Some("Buffered") => "BUFFERED",
        Some("Streamed") => "STREAMED",
        Some("BufferedPartial") => "BUFFERED_PARTIAL",
        Some("FullDuplexStreamed") => "FULL_DUPLEX_STREAMED",
        Some(other) => panic!("unknown processing mode {other}"),
    }
}

/// The bootstrap Envoy Gateway would give Envoy for the overlay's HTTPRoute with these pods.
fn bootstrap(listen: u16, admin: u16, extproc: u16, pods: &[std::net::SocketAddr]) -> String {
    let policy = overlay("extension-policy.yaml");
    let ext = &policy["spec"]["extProc"][0];
    let mode = &ext["processingMode"];
    let (req, resp) = (body_mode(mode["request"]["body"].as_str()), body_mode(mode["response"]["body"].as_str()));
    // Envoy Gateway sends trailers when a body is full duplex.
    let trailers = |m: &str| if m == "FULL_DUPLEX_STREAMED" { "SEND" } else { "SKIP" };
    let timeout = ext["messageTimeout"].as_str().expect("messageTimeout");
    let fail_open = ext["failOpen"].as_bool().unwrap_or(false);
    let traffic = overlay("traffic-policy.yaml");
    let header = traffic["spec"]["loadBalancer"]["endpointOverride"]["extractFrom"][0]["header"]
        .as_str()
        .expect("override header");
    let retry = &traffic["spec"]["retry"];
    let retry_on: Vec<&str> =
        retry["retryOn"]["triggers"].as_sequence().into_iter().flatten().filter_map(|t| t.as_str()).collect();
    let retry_policy = if retry_on.is_empty() {
        String::new()
    } else {
        format!(
            ", retry_policy: {{retry_on: \"{}\", num_retries: {}}}",
            retry_on.join(","),
            retry["numRetries"].as_u64().unwrap_or(2)
        )
    };
    let endpoints: String = pods
        .iter()
        .map(|p| {
            format!(
                "        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n",
                p.ip(),
                p.port()
            )
        })
        .collect();
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: gateway
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    per_connection_buffer_limit_bytes: 32768
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            virtual_hosts:
            - name: llm
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: llm{retry_policy}}}
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {{envoy_grpc: {{cluster_name: extproc}}}}
              failure_mode_allow: {fail_open}
              message_timeout: {timeout}
              allow_mode_override: false
              processing_mode:
                request_header_mode: SEND
                response_header_mode: SEND
                request_body_mode: {req}
                response_body_mode: {resp}
                request_trailer_mode: {}
                response_trailer_mode: {}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: llm
    type: STATIC
    per_connection_buffer_limit_bytes: 32768
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.override_host
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost
            override_host_sources: [{{header: {header}}}]
            fallback_policy:
              policies:
              - typed_extension_config:
                  name: envoy.load_balancing_policies.least_request
                  typed_config: {{"@type": type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest}}
    load_assignment:
      cluster_name: llm
      endpoints:
      - lb_endpoints:
{endpoints}  - name: extproc
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: extproc
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {extproc}}}}}}}
"#,
        trailers(req),
        trailers(resp)
    )
}

fn gateway(extproc: u16, pods: &[std::net::SocketAddr]) -> Envoy {
    let (port, admin) = (free_port(), free_port());
    Envoy::from_bootstrap(&bootstrap(port, admin, extproc, pods), port, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_envoy_gateway_renders_the_overlay_a_200_kb_chat_is_routed_and_in_flight_lasts_the_stream() {
    let sims: Vec<Proc> = (0..2)
        .map(|i| procs::sim(&["--id", &format!("sim-{i}"), "--decode-ms-per-token", "40", "--max-model-len", "200000"]))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("endpoints.yaml");
    let eps: Vec<String> = sims.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    std::fs::write(
        &file,
        format!(
            "models:\n  - name: tiny-chat\n    tokenizer: {}\n    endpoints: [{}]\n",
            fixture_dir().display(),
            eps.join(", ")
        ),
    )
    .expect("write");
    let r = router(&file, &[]);
    let pods: Vec<std::net::SocketAddr> = sims.iter().map(|s| s.addr).collect();
    let gw = gateway(grpc_addr(&r).port(), &pods);
    let url = gw.url("/v1/chat/completions");

    // A 200 KB chat: six times Envoy Gateway's buffer, which a Buffered request body would hit.
    let long: String = (0..6000).map(|i| format!("line {i} of a long pasted document. ")).collect();
    let body = json!({"model": "tiny-chat", "max_tokens": 2, "messages": [{"role": "user", "content": long}]});
    assert!(body.to_string().len() > 200_000);
    let res = client().post(&url).json(&body).send().await.expect("request");
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap_or_default());
    assert!(res.headers().contains_key("x-sim-id"), "answered by a pod");
    let m = client().get(r.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert_eq!(common::metric_where(&m, "prefix_router_decisions_total", "tiny-chat"), 1.0, "the router decided it");

    // A streamed answer of 40 tokens at 40 ms each: counted in flight until its last chunk.
    let stream = json!({"model": "tiny-chat", "max_tokens": 40, "stream": true,
        "messages": [{"role": "user", "content": "tell me slowly"}]});
    let mut res = client().post(&url).json(&stream).send().await.expect("request");
    assert_eq!(res.status(), 200);
    let started = Instant::now();
    res.chunk().await.expect("first chunk");
    let mut samples = Vec::new();
    let mut text = String::new();
    loop {
        let inflight = metric(
            &client().get(r.url("/metrics")).send().await.expect("metrics").text().await.expect("text"),
            "prefix_router_inflight_requests",
        );
        samples.push((started.elapsed(), inflight));
        match res.chunk().await.expect("chunk") {
            Some(c) => text.push_str(&String::from_utf8_lossy(&c)),
            None => break,
        }
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "the whole stream came through");
    // Every sample but the last (taken once the pod had sent its final chunk) is during generation.
    let during = &samples[..samples.len() - 1];
    assert!(during.last().is_some_and(|(t, _)| *t > Duration::from_millis(1000)), "sampled late in the stream");
    assert!(during.iter().all(|(_, n)| *n == 1.0), "in flight until the stream ends: {samples:?}");
    let mut left = f64::NAN;
    for _ in 0..30 {
        let m = client().get(r.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        left = metric(&m, "prefix_router_inflight_requests");
        if left == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0.0, "released when it ends");
}
