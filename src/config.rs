//! Every setting, as a flag and an environment variable, typed and validated once at start-up.

use crate::extproc::BodyMode;
use crate::routing::{Placement, PolicyKind, RoutingConfig};
use clap::Parser;
use prefix_index::policy::PrefixParams;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration like 30s, 5m or 1h30m: {e}"))
}

/// Parsers for the original feature's variables: their errors name the variable, as operators set
/// them through the environment.
fn named_duration(var: &str, s: &str) -> Result<Duration, String> {
    let d = duration(s).map_err(|e| format!("{var}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{var}: must be more than zero"));
    }
    Ok(d)
}
fn health_period(s: &str) -> Result<Duration, String> {
    named_duration("AIBRIX_TOKENIZER_HEALTH_CHECK_PERIOD", s)
}
fn tokenizer_ttl(s: &str) -> Result<Duration, String> {
    named_duration("AIBRIX_TOKENIZER_TTL", s)
}
fn request_timeout(s: &str) -> Result<Duration, String> {
    named_duration("AIBRIX_TOKENIZER_REQUEST_TIMEOUT", s)
}
fn max_tokenizers(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("AIBRIX_MAX_TOKENIZERS_PER_POOL: '{s}' is not a positive whole number")),
    }
}
fn enable_remote(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" | "" => Ok(false),
        _ => Err(format!("AIBRIX_ENABLE_VLLM_REMOTE_TOKENIZER: '{s}' is not true or false")),
    }
}
fn endpoint_template(s: &str) -> Result<String, String> {
    let has_ip = s.contains("%s") || s.contains("{ip}");
    if !has_ip || !(s.starts_with("http://") || s.starts_with("https://")) {
        return Err(format!(
            "AIBRIX_VLLM_TOKENIZER_ENDPOINT_TEMPLATE: '{s}' must be an http(s) URL with %s or {{ip}} for the pod IP"
        ));
    }
    if s.starts_with("https://") {
        return Err("AIBRIX_VLLM_TOKENIZER_ENDPOINT_TEMPLATE: https is not built into this router; use http://".into());
    }
    Ok(s.to_owned())
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "prefix-router",
    version,
    about = "Envoy ext_proc router that sends LLM requests to the vLLM pod holding their prompt prefix"
)]
pub struct Config {
    /// Address every server binds (ext_proc, gRPC health, metrics).
    #[arg(long, env = "PREFIX_ROUTER_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// ext_proc gRPC port (gRPC health is served here too).
    #[arg(long, env = "PREFIX_ROUTER_GRPC_PORT", default_value_t = 9002)]
    pub grpc_port: u16,
    /// gRPC health port (plaintext always: kubelet's gRPC probes speak no TLS).
    #[arg(long, env = "PREFIX_ROUTER_GRPC_HEALTH_PORT", default_value_t = 9003)]
    pub grpc_health_port: u16,
    /// Serve the ext_proc port over TLS: with the certificate and key below, or a self-signed pair
    /// made at start when none is given (what Envoy Gateway's InferencePool wiring needs).
    #[arg(long, env = "PREFIX_ROUTER_GRPC_TLS", default_value_t = false, default_missing_value = "true", num_args = 0..=1, action = clap::ArgAction::Set)]
    pub grpc_tls: bool,
    /// PEM certificate (chain) for the ext_proc port; implies --grpc-tls.
    #[arg(long, env = "PREFIX_ROUTER_GRPC_TLS_CERT_FILE")]
    pub grpc_tls_cert_file: Option<PathBuf>,
    /// PEM private key for the ext_proc port.
    #[arg(long, env = "PREFIX_ROUTER_GRPC_TLS_KEY_FILE")]
    pub grpc_tls_key_file: Option<PathBuf>,
    /// HTTP port for /metrics, /healthz, /readyz and /debug/endpoints.
    #[arg(long, env = "PREFIX_ROUTER_METRICS_PORT", default_value_t = 9090)]
    pub metrics_port: u16,

    /// YAML file of models and endpoints (the embedded default discovery).
    #[arg(long, env = "PREFIX_ROUTER_ENDPOINTS_FILE")]
    pub endpoints_file: Option<PathBuf>,
    /// Discover pods from the Kubernetes API instead (in-cluster config, else kubeconfig).
    #[arg(long, env = "PREFIX_ROUTER_KUBERNETES", default_value = "false", default_missing_value = "true", num_args = 0..=1, action = clap::ArgAction::Set)]
    pub kubernetes: bool,
    /// Namespace to watch (default: the service account's, or the kubeconfig context's).
    #[arg(long, env = "PREFIX_ROUTER_NAMESPACE")]
    pub namespace: Option<String>,
    /// Discover pods through this Gateway API InferencePool (`inference.networking.k8s.io/v1`):
    /// its selector picks the pods, each of its target ports is an endpoint, and its one model
    /// serves every request. A Kubernetes discovery source of its own.
    #[arg(long, env = "PREFIX_ROUTER_INFERENCE_POOL")]
    pub inference_pool: Option<String>,
    /// The InferencePool's namespace (default: the service account's, or the kubeconfig context's).
    #[arg(long, env = "PREFIX_ROUTER_INFERENCE_POOL_NAMESPACE")]
    pub inference_pool_namespace: Option<String>,
    /// Watch pods in every namespace (needs a ClusterRole).
    #[arg(long, env = "PREFIX_ROUTER_ALL_NAMESPACES", default_value = "false", default_missing_value = "true", num_args = 0..=1, action = clap::ArgAction::Set)]
    pub all_namespaces: bool,
    /// Kubernetes: each model's HF tokenizer directory at `DIR/<model name>` (or where a pod's
    /// `model.aibrix.ai/tokenizer` annotation says, under DIR unless absolute), for exact local tokens.
    #[arg(long, env = "PREFIX_ROUTER_TOKENIZERS_DIR")]
    pub tokenizers_dir: Option<PathBuf>,
    /// Label selector for model pods, applied by the API server.
    #[arg(long, env = "PREFIX_ROUTER_POD_SELECTOR", default_value = "model.aibrix.ai/name")]
    pub pod_selector: String,
    /// How often the endpoints file is checked for changes.
    #[arg(long, env = "PREFIX_ROUTER_ENDPOINTS_POLL", default_value = "1s", value_parser = duration)]
    pub endpoints_poll: Duration,

    /// ext_proc request body mode.
    #[arg(long, env = "PREFIX_ROUTER_BODY_MODE", value_enum, default_value_t = BodyMode::Auto)]
    pub body_mode: BodyMode,
    /// Largest request body accepted; larger gets 413.
    #[arg(long, env = "PREFIX_ROUTER_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Header carrying the chosen `ip:port` (AIBrix uses `target-pod`). The `envoy.lb` metadata key
    /// stays `x-gateway-destination-endpoint`, as the Gateway API Inference Extension defines it.
    #[arg(long, env = "PREFIX_ROUTER_DESTINATION_HEADER", default_value = "x-gateway-destination-endpoint")]
    pub destination_header: String,
    /// Fallback endpoints appended to the destination (comma list; needs Envoy's override_host policy).
    #[arg(long, env = "PREFIX_ROUTER_FALLBACK_ENDPOINTS", default_value_t = 0)]
    pub fallback_endpoints: usize,
    /// Route receipts kept for `GET /debug/decisions` on the admin port (0 turns receipts off).
    #[arg(long, env = "PREFIX_ROUTER_RECEIPTS", default_value_t = 256)]
    pub receipts: usize,
    /// A request carrying this header with value `1` or `true` gets its route receipt back as a
    /// response header of the same name (compact JSON, no prompt text). Empty: never.
    #[arg(long, env = "PREFIX_ROUTER_RECEIPT_HEADER", default_value = "")]
    pub receipt_header: String,

    /// Tokens per KV-cache block (vLLM's --block-size).
    #[arg(long, env = "PREFIX_ROUTER_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,
    /// Blocks the prefix index remembers per pod before forgetting the least recently used.
    #[arg(long, env = "PREFIX_ROUTER_INDEX_BLOCKS_PER_POD", default_value_t = 65_536)]
    pub index_blocks_per_pod: usize,
    /// Bytes per token when no tokenizer is at hand (the byte approximation).
    #[arg(long, env = "PREFIX_ROUTER_APPROX_BYTES_PER_TOKEN", default_value_t = 4)]
    pub approx_bytes_per_token: usize,

    /// Routing policy.
    #[arg(long, env = "PREFIX_ROUTER_POLICY", value_enum, default_value_t = PolicyKind::Prefix)]
    pub policy: PolicyKind,
    /// Prefix policy: cost of one uncached prompt block.
    #[arg(long, env = "PREFIX_ROUTER_PREFIX_WEIGHT", default_value_t = 1.0)]
    pub prefix_weight: f64,
    /// Prefix policy: cost of one in-flight request on a pod, in blocks.
    #[arg(long, env = "PREFIX_ROUTER_LOAD_WEIGHT", default_value_t = 1.0)]
    pub load_weight: f64,
    /// Balance guard: pass over a pod with this many more in-flight requests than the least loaded…
    #[arg(long, env = "PREFIX_ROUTER_BALANCE_ABS_THRESHOLD", default_value_t = 8)]
    pub balance_abs_threshold: u64,
    /// …that is also this many times as loaded.
    #[arg(long, env = "PREFIX_ROUTER_BALANCE_REL_THRESHOLD", default_value_t = 1.5)]
    pub balance_rel_threshold: f64,
    /// Where a prompt no pod holds goes (unless every pod's KV events are trusted, when it is
    /// always balanced): `rendezvous` keeps router replicas without events in agreement,
    /// `balanced` spreads new prompts evenly (one replica), `auto` is balanced until the pods'
    /// metrics show that others send them requests too, then rendezvous.
    #[arg(long, env = "PREFIX_ROUTER_PLACEMENT", value_enum, default_value_t = Placement::Auto)]
    pub placement: Placement,
    /// How often each vLLM pod's `/metrics` is read to tell whether others send it requests
    /// (`--placement auto`).
    #[arg(long, env = "PREFIX_ROUTER_TRAFFIC_PERIOD", default_value = "1s", value_parser = duration)]
    pub traffic_period: Duration,
    /// Most in-flight requests per pod; when every pod of a model is at it, 429. 0 = no limit.
    #[arg(long, env = "PREFIX_ROUTER_MAX_INFLIGHT_PER_POD", default_value_t = 0)]
    pub max_inflight_per_pod: u64,
    /// Accept a `chat_template` sent in a request (rendered under a work budget); without this,
    /// such requests get 400, as vLLM answers them unless started with the same flag.
    #[arg(long, env = "PREFIX_ROUTER_TRUST_REQUEST_CHAT_TEMPLATE", default_value_t = false, default_missing_value = "true", num_args = 0..=1, action = clap::ArgAction::Set)]
    pub trust_request_chat_template: bool,
    /// Tokenize each request through `/tokenize` on a ready vLLM pod of its model.
    #[arg(long, env = "AIBRIX_ENABLE_VLLM_REMOTE_TOKENIZER", default_value = "false", value_parser = enable_remote, action = clap::ArgAction::Set)]
    pub enable_vllm_remote_tokenizer: bool,
    /// URL of a pod's tokenizer: `%s` or `{ip}` = pod IP, `{port}` = pod port.
    #[arg(long, env = "AIBRIX_VLLM_TOKENIZER_ENDPOINT_TEMPLATE", default_value = "http://%s:8000", value_parser = endpoint_template)]
    pub vllm_tokenizer_endpoint_template: String,
    /// How often each tokenizer endpoint is probed (ejected ones come back through this).
    #[arg(long, env = "AIBRIX_TOKENIZER_HEALTH_CHECK_PERIOD", default_value = "30s", value_parser = health_period)]
    pub tokenizer_health_check_period: Duration,
    /// A model's remote tokenizer is dropped after this long unused.
    #[arg(long, env = "AIBRIX_TOKENIZER_TTL", default_value = "5m", value_parser = tokenizer_ttl)]
    pub tokenizer_ttl: Duration,
    /// Most models with a live remote tokenizer; the least recently used goes first.
    #[arg(long, env = "AIBRIX_MAX_TOKENIZERS_PER_POOL", default_value = "100", value_parser = max_tokenizers)]
    pub max_tokenizers_per_pool: usize,
    /// Budget for one request's remote tokenization, retry included.
    #[arg(long, env = "AIBRIX_TOKENIZER_REQUEST_TIMEOUT", default_value = "10s", value_parser = request_timeout)]
    pub tokenizer_request_timeout: Duration,
    /// Bytes of token ids the tokenization cache keeps (exact request → tokens), 0 = off.
    #[arg(long, env = "PREFIX_ROUTER_TOKENIZE_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub tokenize_cache_bytes: usize,
    /// Threads that tokenize and render chat templates at once (0 = one per core).
    #[arg(long, env = "PREFIX_ROUTER_TOKENIZE_WORKERS", default_value_t = 0)]
    pub tokenize_workers: usize,
    /// Requests that may wait for a tokenize worker; past this, requests are routed on the byte
    /// approximation (counted) rather than wait.
    #[arg(long, env = "PREFIX_ROUTER_TOKENIZE_QUEUE", default_value_t = 256)]
    pub tokenize_queue: usize,
    /// Most text (bytes, after the chat template) tokenized locally per request; a longer prompt is
    /// routed on the tokens of its leading part (counted), which bounds memory per request.
    #[arg(long, env = "PREFIX_ROUTER_MAX_TOKENIZE_BYTES", default_value_t = 512 * 1024)]
    pub max_tokenize_bytes: usize,

    /// Every pod's `GET /health` is probed this often; a failure takes it out of routing.
    #[arg(long, env = "PREFIX_ROUTER_ENDPOINT_PROBE_PERIOD", default_value = "5s", value_parser = duration)]
    pub endpoint_probe_period: Duration,
    /// Pods out of routing are probed this often; one passing probe brings them back.
    #[arg(long, env = "PREFIX_ROUTER_ENDPOINT_RETRY_PERIOD", default_value = "500ms", value_parser = duration)]
    pub endpoint_retry_period: Duration,

    /// On SIGTERM: report not ready (gRPC health, /readyz) but keep serving new streams this long,
    /// so load balancers stop sending before the listener closes.
    #[arg(long, env = "PREFIX_ROUTER_DRAIN_PERIOD", default_value = "5s", value_parser = duration)]
    pub drain_period: Duration,
    /// After the drain period: stop accepting and let open streams finish for at most this long.
    #[arg(long, env = "PREFIX_ROUTER_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// Subscribe to each vLLM pod's KV-cache events (`GET /kv_event_sources`, ZMQ) and route on
    /// what pods report holding; pods without events keep the routing-history index.
    #[arg(long, env = "PREFIX_ROUTER_KV_EVENTS", default_value_t = false, default_missing_value = "true", num_args = 0..=1, action = clap::ArgAction::Set)]
    pub kv_events: bool,
    /// Where a pod publishes events when it does not serve `/kv_event_sources` (`{ip}`, `{port}`).
    #[arg(long, env = "PREFIX_ROUTER_KV_EVENTS_ENDPOINT_TEMPLATE", default_value = "tcp://{ip}:5557")]
    pub kv_events_endpoint_template: String,
    /// Its replay socket in that case (none by default: no replay, a lost event degrades the pod).
    #[arg(long, env = "PREFIX_ROUTER_KV_EVENTS_REPLAY_TEMPLATE")]
    pub kv_events_replay_template: Option<String>,
    /// How long a routed prefix counts as on its pod before the pod's events confirm it.
    #[arg(long, env = "PREFIX_ROUTER_KV_EVENTS_PENDING_TTL", default_value = "3s", value_parser = duration)]
    pub kv_events_pending_ttl: Duration,
    /// Longest a replay may take before the pod is marked degraded.
    #[arg(long, env = "PREFIX_ROUTER_KV_EVENTS_REPLAY_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub kv_events_replay_timeout: Duration,

    /// A routed request stops counting against its pod after this long even if Envoy never ends it.
    #[arg(long, env = "PREFIX_ROUTER_INFLIGHT_TTL", default_value = "10m", value_parser = duration)]
    pub inflight_ttl: Duration,
}

impl Config {
    /// The routing side's own parameters.
    pub fn routing(&self) -> RoutingConfig {
        RoutingConfig {
            policy: self.policy,
            params: PrefixParams {
                prefix_weight: self.prefix_weight,
                load_weight: self.load_weight,
                balance_abs: self.balance_abs_threshold,
                balance_rel: self.balance_rel_threshold,
            },
            placement: self.placement,
            block_size: self.block_size,
            index_blocks_per_pod: self.index_blocks_per_pod,
            fallbacks: self.fallback_endpoints,
            max_inflight_per_pod: self.max_inflight_per_pod,
            trust_request_chat_template: self.trust_request_chat_template,
            pending_ttl: self.kv_events_pending_ttl,
            receipts: self.receipts,
        }
    }

    /// How the ext_proc port is secured.
    pub fn tls(&self) -> crate::tls::TlsSource {
        match (&self.grpc_tls_cert_file, &self.grpc_tls_key_file) {
            (Some(cert), Some(key)) => crate::tls::TlsSource::Files { cert: cert.clone(), key: key.clone() },
            _ if self.grpc_tls => crate::tls::TlsSource::SelfSigned,
            _ => crate::tls::TlsSource::Off,
        }
    }

    /// The routing parameters of every flag at its default (benches and tools that build a router
    /// without a command line); `PREFIX_ROUTER_*` variables still apply.
    pub fn default_routing() -> Result<RoutingConfig, clap::Error> {
        Self::try_parse_from(["prefix-router", "--endpoints-file", "-"]).map(|c| c.routing())
    }

    /// Checks what clap cannot: relations and ranges. The message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, &str); 9] = [
            (self.block_size > 0, "--block-size (PREFIX_ROUTER_BLOCK_SIZE) must be > 0"),
            (self.index_blocks_per_pod > 0, "--index-blocks-per-pod (PREFIX_ROUTER_INDEX_BLOCKS_PER_POD) must be > 0"),
            (
                self.approx_bytes_per_token > 0,
                "--approx-bytes-per-token (PREFIX_ROUTER_APPROX_BYTES_PER_TOKEN) must be > 0",
            ),
            (self.max_body_bytes > 0, "--max-body-bytes (PREFIX_ROUTER_MAX_BODY_BYTES) must be > 0"),
            (
                self.prefix_weight >= 0.0 && self.prefix_weight.is_finite(),
                "--prefix-weight (PREFIX_ROUTER_PREFIX_WEIGHT) must be ≥ 0",
            ),
            (
                self.load_weight >= 0.0 && self.load_weight.is_finite(),
                "--load-weight (PREFIX_ROUTER_LOAD_WEIGHT) must be ≥ 0",
            ),
            (
                self.balance_rel_threshold >= 1.0,
                "--balance-rel-threshold (PREFIX_ROUTER_BALANCE_REL_THRESHOLD) must be ≥ 1",
            ),
            (
                self.traffic_period >= Duration::from_millis(100),
                "--traffic-period (PREFIX_ROUTER_TRAFFIC_PERIOD) must be ≥ 100ms",
            ),
            (
                http::HeaderName::from_bytes(self.destination_header.as_bytes()).is_ok()
                    && self.destination_header == self.destination_header.to_ascii_lowercase(),
                "--destination-header (PREFIX_ROUTER_DESTINATION_HEADER) must be a lower-case HTTP header name",
            ),
        ];
        let sources = [self.endpoints_file.is_some(), self.kubernetes, self.inference_pool.is_some()];
        match sources.iter().filter(|s| **s).count() {
            0 => {
                return Err("no discovery source: give --endpoints-file (PREFIX_ROUTER_ENDPOINTS_FILE), --kubernetes \
                            (PREFIX_ROUTER_KUBERNETES=true) or --inference-pool (PREFIX_ROUTER_INFERENCE_POOL)"
                    .into())
            }
            1 => {}
            _ => {
                return Err(
                    "--endpoints-file, --kubernetes and --inference-pool are discovery sources: choose one".into()
                )
            }
        }
        let receipt = self.receipt_header.trim();
        if !receipt.is_empty() && http::HeaderName::from_bytes(receipt.to_ascii_lowercase().as_bytes()).is_err() {
            return Err("--receipt-header (PREFIX_ROUTER_RECEIPT_HEADER) must be an HTTP header name".into());
        }
        if self.grpc_tls_cert_file.is_some() != self.grpc_tls_key_file.is_some() {
            return Err("--grpc-tls-cert-file and --grpc-tls-key-file (PREFIX_ROUTER_GRPC_TLS_CERT_FILE/_KEY_FILE) \
                        go together"
                .into());
        }
        if self.all_namespaces && self.namespace.is_some() {
            return Err("--namespace and --all-namespaces contradict each other".into());
        }
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err((*msg).to_owned()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_header_must_be_a_header_name_and_tls_files_come_in_pairs() {
        let parse = |args: &[&str]| {
            let mut all = vec!["prefix-router", "--endpoints-file", "e.yaml"];
            all.extend_from_slice(args);
            Config::try_parse_from(all).expect("parses").validate()
        };
        assert!(parse(&["--receipt-header", "X-Route-Receipt"]).is_ok());
        let bad = parse(&["--receipt-header", "route receipt"]).expect_err("refused");
        assert!(bad.contains("--receipt-header"), "{bad}");
        let half = parse(&["--grpc-tls-cert-file", "tls.crt"]).expect_err("refused");
        assert!(half.contains("--grpc-tls-key-file"), "{half}");
        assert_eq!(
            Config::try_parse_from(["prefix-router", "--endpoints-file", "e.yaml", "--grpc-tls"])
                .expect("parses")
                .tls(),
            crate::tls::TlsSource::SelfSigned
        );
    }

    #[test]
    fn defaults_follow_the_design_and_bad_values_name_the_setting() {
        let c = Config::try_parse_from(["prefix-router", "--endpoints-file", "e.yaml"]).expect("parses");
        assert_eq!((c.grpc_port, c.grpc_health_port, c.metrics_port, c.block_size), (9002, 9003, 9090, 16));
        assert_eq!(c.destination_header, "x-gateway-destination-endpoint");
        assert_eq!(c.max_body_bytes, 8 << 20);
        assert_eq!(c.routing().placement, Placement::Auto);
        c.validate().expect("defaults are valid");
        let err = Config::try_parse_from(["prefix-router", "--endpoints-file", "e", "--inflight-ttl", "5x"])
            .expect_err("bad");
        assert!(err.to_string().contains("--inflight-ttl"), "{err}");
        let c =
            Config::try_parse_from(["prefix-router", "--endpoints-file", "e", "--block-size", "0"]).expect("parses");
        assert!(c.validate().expect_err("invalid").contains("--block-size"));
        let c = Config::try_parse_from(["prefix-router", "--endpoints-file", "e", "--placement", "balanced"])
            .expect("parses");
        assert_eq!(c.routing().placement, Placement::Balanced);
        let err =
            Config::try_parse_from(["prefix-router", "--endpoints-file", "e", "--placement", "even"]).expect_err("bad");
        assert!(err.to_string().contains("rendezvous"), "the choices are named: {err}");
        let c = Config::try_parse_from(["prefix-router", "--endpoints-file", "e", "--inflight-ttl", "1h30m"])
            .expect("parses");
        assert_eq!(c.inflight_ttl, Duration::from_secs(5400));
    }

    #[test]
    fn boolean_switches_work_with_and_without_a_value() {
        for (args, want) in [
            (&["--kubernetes"][..], true),
            (&["--kubernetes=true"][..], true),
            (&["--kubernetes", "false"][..], false),
            (&[][..], false),
        ] {
            let c = Config::try_parse_from(["prefix-router"].iter().chain(args)).expect("parses");
            assert_eq!(c.kubernetes, want, "{args:?}");
        }
        let c = Config::try_parse_from([
            "prefix-router",
            "--kv-events",
            "--trust-request-chat-template",
            "--all-namespaces",
        ])
        .expect("parses");
        assert!(c.kv_events && c.trust_request_chat_template && c.all_namespaces);
    }
}
