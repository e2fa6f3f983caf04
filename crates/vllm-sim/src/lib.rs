//! `vllm-sim`: a vLLM stand-in that speaks vLLM's HTTP API, tokenizes with a real HuggingFace
//! tokenizer and chat template, keeps a modelled prefix cache of KV blocks and answers with a
//! latency model. It shares no routing code with the router.

mod api;
pub mod cache;
mod engine;
mod error;
pub mod faults;
mod generate;
pub mod kv_events;
mod kv_hash;
mod metrics;
mod prompt;

use clap::Parser;
use hf_chat::HfTokenizer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, Parser)]
#[command(name = "vllm-sim", about = "A vLLM stand-in: real tokenizer, modelled prefix cache and latency")]
pub struct Args {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port to listen on (0 picks a free one; the bound address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Model name (served under this name unless --served-model-name is given).
    #[arg(long)]
    pub model: String,
    /// HuggingFace tokenizer directory (tokenizer.json + tokenizer_config.json); defaults to --model.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Names clients may use for the model (repeatable).
    #[arg(long = "served-model-name")]
    pub served_model_names: Vec<String>,
    /// LoRA adapter names served on top of the model (repeatable); they separate cache blocks.
    #[arg(long = "lora-modules")]
    pub lora_modules: Vec<String>,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// KV blocks in the pool.
    #[arg(long, default_value_t = 8192)]
    pub num_gpu_blocks: usize,
    /// Requests that run at once; the rest wait.
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Longest prompt + output accepted.
    #[arg(long, default_value_t = 32768)]
    pub max_model_len: usize,
    /// Prefill cost of each uncached prompt token, in microseconds.
    #[arg(long, default_value_t = 20.0)]
    pub prefill_us_per_token: f64,
    /// Decode cost of each output token, in milliseconds.
    #[arg(long, default_value_t = 2.0)]
    pub decode_ms_per_token: f64,
    /// Output tokens when a request gives no max_tokens.
    #[arg(long, default_value_t = 16)]
    pub default_max_tokens: usize,
    /// Name put in the `x-sim-id` response header (default: the bound address).
    #[arg(long)]
    pub id: Option<String>,
    /// Fault: delay added to every /tokenize call, in ms.
    #[arg(long, default_value_t = 0)]
    pub fault_tokenize_delay_ms: u64,
    /// Fault: fraction of /tokenize calls answered 500.
    #[arg(long, default_value_t = 0.0)]
    pub fault_tokenize_error_rate: f64,
    /// Fault: /tokenize never answers.
    #[arg(long)]
    pub fault_tokenize_hang: bool,
    /// Fault: /health answers 503.
    #[arg(long)]
    pub fault_health_fail: bool,
    /// Accept a `chat_template` sent in a request, as vLLM's flag of the same name; without it such
    /// requests get 400.
    #[arg(long, default_value_t = false)]
    pub trust_request_chat_template: bool,
    /// vLLM's `--kv-events-config` JSON: publish KV-cache events on ZMQ (off unless
    /// `enable_kv_cache_events`; a port 0 binds any free port, reported by `/kv_event_sources`).
    #[arg(long, value_parser = kv_events::KvEventsConfig::parse)]
    pub kv_events_config: Option<kv_events::KvEventsConfig>,
    /// vLLM's `--prefix-caching-hash-algo`. The sim always names blocks by `sha256_cbor` (vLLM's
    /// default `sha256` hashes a Python pickle, which nothing outside Python can reproduce) and
    /// says so in `vllm:cache_config_info`.
    #[arg(long, default_value = "sha256_cbor", value_parser = ["sha256", "sha256_cbor"])]
    pub prefix_caching_hash_algo: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--tokenizer: {0}")]
    Tokenizer(#[from] hf_chat::LoadError),
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// What every handler shares.
pub(crate) struct Sim {
    pub tokenizer: HfTokenizer,
    pub served: Vec<String>,
    pub loras: Vec<String>,
    pub root: String,
    pub block_size: usize,
    pub max_model_len: usize,
    pub default_max_tokens: usize,
    pub id: String,
    pub engine: Arc<engine::Engine>,
    pub metrics: Arc<metrics::SimMetrics>,
    pub faults: faults::FaultSwitch,
    pub created: u64,
    pub trust_request_chat_template: bool,
    /// `GET /kv_event_sources`, resolved at start.
    pub kv_event_sources: serde_json::Value,
}

impl Sim {
    /// Resolves the requested model: `None` for the base model, `Some(name)` for a LoRA adapter.
    pub(crate) fn resolve_model(&self, requested: Option<&str>) -> Result<Option<String>, error::SimError> {
        match requested {
            None => Ok(None),
            Some(m) if self.served.iter().any(|s| s == m) => Ok(None),
            Some(m) if self.loras.iter().any(|l| l == m) => Ok(Some(m.to_owned())),
            Some(m) => Err(error::SimError::ModelNotFound(m.to_owned())),
        }
    }
}

/// Loads the tokenizer, binds, and serves until `shutdown` resolves.
pub async fn run(
    args: Args,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let faults = faults::Faults {
        tokenize_delay_ms: args.fault_tokenize_delay_ms,
        tokenize_error_rate: args.fault_tokenize_error_rate,
        tokenize_hang: args.fault_tokenize_hang,
        health_fail: args.fault_health_fail,
    };
    faults.validate().map_err(StartError::Config)?;
    if args.block_size == 0 || args.num_gpu_blocks == 0 || args.max_num_seqs == 0 {
        return Err(StartError::Config("--block-size, --num-gpu-blocks and --max-num-seqs must be > 0".into()));
    }
    let tokenizer_dir = args.tokenizer.clone().unwrap_or_else(|| PathBuf::from(&args.model));
    let tokenizer = HfTokenizer::from_dir(&tokenizer_dir)?;
    let served =
        if args.served_model_names.is_empty() { vec![args.model.clone()] } else { args.served_model_names.clone() };
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;

    let metrics = Arc::new(metrics::SimMetrics::new(&served[0], args.block_size, args.num_gpu_blocks)?);
    let timing = engine::Timing {
        prefill_us_per_token: args.prefill_us_per_token,
        decode_ms_per_token: args.decode_ms_per_token,
        max_num_seqs: args.max_num_seqs,
    };
    let pool = cache::BlockPool::new(args.num_gpu_blocks, args.block_size);
    if args.prefix_caching_hash_algo != "sha256_cbor" {
        tracing::warn!(requested = %args.prefix_caching_hash_algo, "block hashes are sha256_cbor (a pickle hash cannot be reproduced)");
    }
    let (publisher, kv_events) = match args.kv_events_config.clone().filter(kv_events::KvEventsConfig::publishes) {
        Some(cfg) => {
            let (p, cfg) = kv_events::start(cfg).await.map_err(StartError::Config)?;
            (Some(p), Some(cfg))
        }
        None => (None, args.kv_events_config.clone()),
    };
    let sim = Arc::new(Sim {
        tokenizer,
        root: args.model.clone(),
        served,
        loras: args.lora_modules.clone(),
        block_size: args.block_size,
        max_model_len: args.max_model_len,
        default_max_tokens: args.default_max_tokens,
        id: args.id.clone().unwrap_or_else(|| bound.to_string()),
        trust_request_chat_template: args.trust_request_chat_template,
        engine: Arc::new(engine::Engine::new(pool, timing, Arc::clone(&metrics), publisher)),
        kv_event_sources: kv_events.map_or_else(|| serde_json::json!({}), |c| c.sources()),
        metrics,
        faults: faults::FaultSwitch::new(faults),
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    });
    // Tests and scripts read the bound address from this line.
    println!("vllm-sim listening on http://{bound}");
    tracing::info!(%bound, model = %args.model, "vllm-sim ready");
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, api::router(sim)).with_graceful_shutdown(shutdown).await.map_err(StartError::Serve)
}

/// Logs to stderr; `RUST_LOG` overrides the default `info` level.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
