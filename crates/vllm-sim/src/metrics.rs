//! The `vllm:` metrics a router or a benchmark reads, named and labelled as vLLM exports them.

use prometheus::{Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry, TextEncoder};

pub(crate) struct SimMetrics {
    registry: Registry,
    pub running: IntGauge,
    pub waiting: IntGauge,
    pub kv_usage: Gauge,
    pub queries: IntCounter,
    pub hits: IntCounter,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub ttft: Histogram,
    /// Not a vLLM series: `/tokenize` calls answered, so tests can see where tokenize traffic goes.
    pub tokenize_calls: IntCounter,
    pub render_calls: IntCounter,
}

impl SimMetrics {
    pub(crate) fn new(model: &str, block_size: usize, num_gpu_blocks: usize) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("model_name", model);
        let running = IntGauge::with_opts(opts("vllm:num_requests_running", "Requests running on the engine"))?;
        let waiting = IntGauge::with_opts(opts("vllm:num_requests_waiting", "Requests waiting to be scheduled"))?;
        let kv_usage = Gauge::with_opts(opts("vllm:kv_cache_usage_perc", "KV-cache usage, 1 = 100%"))?;
        let queries =
            IntCounter::with_opts(opts("vllm:prefix_cache_queries_total", "Prefix cache queries, in tokens"))?;
        let hits = IntCounter::with_opts(opts("vllm:prefix_cache_hits_total", "Prefix cache hits, in tokens"))?;
        let prompt_tokens = IntCounter::with_opts(opts("vllm:prompt_tokens_total", "Prefill tokens processed"))?;
        let generation_tokens = IntCounter::with_opts(opts("vllm:generation_tokens_total", "Tokens generated"))?;
        let ttft = Histogram::with_opts(
            HistogramOpts::new("vllm:time_to_first_token_seconds", "Time to first token")
                .const_label("model_name", model)
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                    40.0, 80.0,
                ]),
        )?;
        let tokenize_calls = IntCounter::with_opts(
            Opts::new("vllm_sim_tokenize_requests_total", "/tokenize calls answered (vllm-sim only)")
                .const_label("model_name", model),
        )?;
        let render_calls = IntCounter::with_opts(
            Opts::new(
                "vllm_sim_render_requests_total",
                "/v1/completions/render and /v1/chat/completions/render calls answered (vllm-sim only)",
            )
            .const_label("model_name", model),
        )?;
        let info = Gauge::with_opts(
            opts("vllm:cache_config_info", "Information of the KV cache config")
                .const_label("block_size", block_size.to_string())
                .const_label("num_gpu_blocks", num_gpu_blocks.to_string())
                .const_label("enable_prefix_caching", "True")
                .const_label("prefix_caching_hash_algo", "sha256_cbor")
                .const_label("hash_block_size", block_size.to_string()),
        )?;
        info.set(1.0);
        for c in [
            Box::new(running.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(waiting.clone()),
            Box::new(kv_usage.clone()),
            Box::new(queries.clone()),
            Box::new(hits.clone()),
            Box::new(prompt_tokens.clone()),
            Box::new(generation_tokens.clone()),
            Box::new(ttft.clone()),
            Box::new(info),
            Box::new(tokenize_calls.clone()),
            Box::new(render_calls.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Self {
            registry,
            running,
            waiting,
            kv_usage,
            queries,
            hits,
            prompt_tokens,
            generation_tokens,
            ttft,
            tokenize_calls,
            render_calls,
        })
    }

    pub(crate) fn record_admission(&self, prompt_tokens: usize, cached_tokens: usize, usage: f64) {
        self.queries.inc_by(prompt_tokens as u64);
        self.hits.inc_by(cached_tokens as u64);
        self.prompt_tokens.inc_by(prompt_tokens as u64);
        self.kv_usage.set(usage);
    }

    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
