//! Wiring: discovery, tokenizer, router, and the three servers (ext_proc + gRPC health, gRPC
//! health, admin HTTP). Every background task is owned here and stops on shutdown.

use crate::config::Config;
use crate::discovery::inference_pool::PoolSource;
use crate::discovery::kubernetes::KubeSource;
use crate::discovery::static_file::StaticFile;
use crate::discovery::{DiscoveryError, Registry};
use crate::extproc::{Context, ExtProc};
use crate::metrics::{self, Metrics};
use crate::routing::Router;
use crate::tokenizer::{
    CpuPool, Limits, LocalTokenizer, PieceCache, PoolConfig, TokenCache, Tokenization, TokenizerPool,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

pub const EXTPROC_SERVICE: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("Kubernetes: {0}")]
    Kube(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("admin server: {0}")]
    Admin(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let l = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
    let bound = l.local_addr().map_err(|source| StartError::Bind { addr, source })?;
    Ok((l, bound))
}

#[derive(Clone)]
struct Admin {
    draining: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    router: Arc<Router>,
    equality: Arc<crate::tokenizer::probe::EngineEquality>,
}

pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    cfg.validate().map_err(StartError::Config)?;
    let metrics = Arc::new(Metrics::new()?);
    let registry = Arc::new(Registry::with_catch_all(cfg.inference_pool.clone()));
    let source = match (&cfg.endpoints_file, &cfg.inference_pool) {
        (Some(path), _) => {
            let mut file = StaticFile::new(path.clone());
            file.load_into(&registry)?;
            Source::File(file)
        }
        (None, Some(pool)) => Source::Pool(Box::new(pool_source(&cfg, pool).await?)),
        (None, None) => Source::Kube(Box::new(kube_source(&cfg).await?)),
    };

    let pool = if cfg.enable_vllm_remote_tokenizer {
        let pool_cfg = PoolConfig {
            template: cfg.vllm_tokenizer_endpoint_template.clone(),
            timeout: cfg.tokenizer_request_timeout,
            health_period: cfg.tokenizer_health_check_period,
            ttl: cfg.tokenizer_ttl,
            max_models: cfg.max_tokenizers_per_pool,
        };
        Some(Arc::new(TokenizerPool::new(pool_cfg, Arc::clone(&metrics)).map_err(StartError::Config)?))
    } else {
        None
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    // One byte budget for exact requests and for the chat pieces the local tokenizer reuses.
    let token_cache = Arc::new(TokenCache::new(cfg.tokenize_cache_bytes));
    let tokenizer = Arc::new(Tokenization::new(
        LocalTokenizer::new(
            cfg.approx_bytes_per_token,
            Some(PieceCache { cache: Arc::clone(&token_cache), metrics: Arc::clone(&metrics) }),
        )
        .with_limits(Limits {
            cpu: Arc::new(CpuPool::new(cfg.tokenize_workers, cfg.tokenize_queue)),
            max_bytes: cfg.max_tokenize_bytes,
            metrics: Arc::clone(&metrics),
        }),
        pool.clone(),
        token_cache,
        Arc::clone(&metrics),
    ));
    let verify_local = tokenizer.verify_local_tokenizers(Arc::clone(&registry), stop_rx.clone());
    let equality = tokenizer.equality();
    let router = Arc::new(Router::new(Arc::clone(&registry), tokenizer, cfg.routing(), Arc::clone(&metrics)));
    {
        let (router, pool) = (Arc::clone(&router), pool.clone());
        metrics::register_state(&metrics, move || {
            let mut s = router.sample();
            if let Some(pool) = &pool {
                let (models, per_model) = pool.sample();
                s.tokenizer_models = Some(models as u64);
                for (model, healthy, ejected) in per_model {
                    s.tokenizer_endpoints.push((model.clone(), "healthy", healthy));
                    s.tokenizer_endpoints.push((model, "ejected", ejected));
                }
            }
            s
        })?;
    }

    let (grpc, grpc_addr) = bind(SocketAddr::new(cfg.host, cfg.grpc_port)).await?;
    let (health, health_addr) = bind(SocketAddr::new(cfg.host, cfg.grpc_health_port)).await?;
    let (admin, admin_addr) = bind(SocketAddr::new(cfg.host, cfg.metrics_port)).await?;

    let (draining_tx, draining) = watch::channel(false);
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter.set_service_status("liveness", ServingStatus::Serving).await;
    let mut tasks = tokio::task::JoinSet::new();
    // Readiness follows discovery's first full sync.
    tasks.spawn(follow_readiness(reporter.clone(), Arc::clone(&registry), draining.clone(), stop_rx.clone()));
    match source {
        Source::File(file) => tasks.spawn(file.watch(Arc::clone(&registry), cfg.endpoints_poll, stop_rx.clone())),
        Source::Kube(kube) => tasks.spawn(kube.watch(Arc::clone(&registry), stop_rx.clone())),
        Source::Pool(pool) => tasks.spawn(pool.watch(Arc::clone(&registry), stop_rx.clone())),
    };
    tasks.spawn(Arc::clone(&router).follow_discovery(stop_rx.clone()));
    tasks.spawn(verify_local);
    if cfg.kv_events {
        let sink =
            Arc::new(crate::kv_events::RouterSink { router: Arc::clone(&router), metrics: Arc::clone(&metrics) });
        let settings = crate::kv_events::Settings {
            endpoint_template: cfg.kv_events_endpoint_template.clone(),
            replay_template: cfg.kv_events_replay_template.clone(),
            replay_timeout: cfg.kv_events_replay_timeout,
            rediscover: std::time::Duration::from_secs(30),
        };
        tasks.spawn(crate::kv_events::follow_discovery(Arc::clone(&registry), sink, settings, stop_rx.clone()));
    }
    // Only the prefix policy places new prompts; the others have no use for the counts.
    if cfg.placement == crate::routing::Placement::Auto && cfg.policy == crate::routing::PolicyKind::Prefix {
        tasks.spawn(crate::discovery::traffic::watch(Arc::clone(&registry), cfg.traffic_period, stop_rx.clone()));
    }
    tasks.spawn(crate::discovery::health::probe(
        Arc::clone(&registry),
        Arc::clone(&metrics),
        cfg.endpoint_probe_period,
        cfg.endpoint_retry_period,
        stop_rx.clone(),
    ));
    if let Some(pool) = pool {
        // Health probes and TTL expiry, off the request path.
        tasks.spawn(pool.maintain(stop_rx.clone()));
    }

    let extproc = ExtProc::new(Context {
        router: Arc::clone(&router),
        metrics: Arc::clone(&metrics),
        body_mode: cfg.body_mode,
        max_body_bytes: cfg.max_body_bytes,
        destination_header: cfg.destination_header.clone(),
        inflight_ttl: cfg.inflight_ttl,
        receipt_header: Some(cfg.receipt_header.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()),
    });
    // Room for twice the largest body we accept: a body somewhat over the limit still decodes and
    // gets the router's own 413; past this, the decode error is answered 413 as well.
    let max_msg = cfg.max_body_bytes.saturating_mul(2).saturating_add(1 << 20);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut grpc_builder = tonic::transport::Server::builder();
    if let Some(tls) = crate::tls::server_config(&cfg.tls())? {
        grpc_builder = grpc_builder.tls_config(tls)?;
    }
    let grpc_server = grpc_builder
        .add_service(health_service)
        .add_service(
            ExternalProcessorServer::new(extproc).max_decoding_message_size(max_msg).max_encoding_message_size(max_msg),
        )
        .serve_with_incoming_shutdown(no_delay(grpc), stopped(stop_rx.clone()));
    let health_server = tonic::transport::Server::builder()
        .add_service(HealthServer::new(HealthService::from_health_reporter(reporter)))
        .serve_with_incoming_shutdown(no_delay(health), stopped(stop_rx.clone()));
    let admin_app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics_handler))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(readyz))
        .route("/debug/endpoints", axum::routing::get(endpoints_handler))
        .route("/debug/decisions", axum::routing::get(decisions_handler))
        // Accepts what routing accepts (axum's default cap is 2 MB).
        .route(
            "/debug/tokenize",
            axum::routing::post(tokenize_handler).layer(axum::extract::DefaultBodyLimit::max(cfg.max_body_bytes)),
        )
        .with_state(Admin { draining, metrics, registry, router, equality });
    let admin_server = axum::serve(admin, admin_app).with_graceful_shutdown(stopped(stop_rx.clone()));

    // Scripts and tests read the bound addresses from this line.
    println!("prefix-router listening on grpc={grpc_addr} health={health_addr} admin=http://{admin_addr}");
    tracing::info!(%grpc_addr, %health_addr, %admin_addr, "prefix-router ready");
    let (hard_tx, mut hard_rx) = watch::channel(false);
    let (drain_period, grace) = (cfg.drain_period, cfg.shutdown_grace);
    tasks.spawn(async move {
        shutdown.await;
        // Not ready at once, still serving: Kubernetes and Envoy stop sending while we answer.
        let _ = draining_tx.send(true);
        tracing::info!(?drain_period, "shutting down: not ready; serving on for the drain period");
        tokio::time::sleep(drain_period).await;
        tracing::info!(?grace, "drain period over: no new connections; open streams may finish");
        let _ = stop_tx.send(true);
        tokio::time::sleep(grace).await;
        let _ = hard_tx.send(true);
    });
    let servers = async { tokio::join!(grpc_server, health_server, admin_server) };
    let (g, h, a) = tokio::select! {
        done = servers => done,
        _ = hard_rx.wait_for(|h| *h) => {
            tracing::warn!("shutdown grace over: closing the streams still open");
            tasks.abort_all();
            return Ok(());
        }
    };
    tasks.abort_all();
    g?;
    h?;
    a.map_err(StartError::Admin)
}

enum Source {
    File(StaticFile),
    Kube(Box<KubeSource>),
    Pool(Box<PoolSource>),
}

/// The InferencePool and its pods, in the pool's namespace.
async fn pool_source(cfg: &Config, name: &str) -> Result<PoolSource, StartError> {
    let client = kube::Client::try_default().await.map_err(|e| StartError::Kube(e.to_string()))?;
    let ns = cfg.inference_pool_namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
    tracing::info!(namespace = %ns, pool = %name, "watching the InferencePool");
    let ar = crate::discovery::inference_pool::api_resource();
    Ok(PoolSource {
        pools: kube::Api::namespaced_with(client.clone(), &ns, &ar),
        pods: kube::Api::namespaced(client, &ns),
        name: name.to_owned(),
        tokenizers_dir: cfg.tokenizers_dir.clone(),
    })
}

/// In-cluster config inside a pod, kubeconfig outside; the namespace from the flag, else the
/// service account's or the kubeconfig context's.
async fn kube_source(cfg: &Config) -> Result<KubeSource, StartError> {
    let client = kube::Client::try_default().await.map_err(|e| StartError::Kube(e.to_string()))?;
    let api = if cfg.all_namespaces {
        kube::Api::all(client)
    } else {
        let ns = cfg.namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
        tracing::info!(namespace = %ns, selector = %cfg.pod_selector, "watching pods");
        kube::Api::namespaced(client, &ns)
    };
    let tokenizers = crate::discovery::kubernetes::Tokenizers::new(cfg.tokenizers_dir.clone());
    Ok(KubeSource {
        api,
        selector: cfg.pod_selector.clone(),
        tokenizers,
        mapping: crate::discovery::kubernetes::Mapping::Labels,
    })
}

/// Accepted sockets with Nagle off: small gRPC frames otherwise wait on the peer's delayed ACK
/// (tens of milliseconds per request).
fn no_delay(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

async fn follow_readiness(
    reporter: HealthReporter,
    registry: Arc<Registry>,
    mut draining: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut synced = registry.subscribe_synced();
    loop {
        let ready = *synced.borrow_and_update() && !*draining.borrow_and_update();
        let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        for svc in ["", "readiness", EXTPROC_SERVICE] {
            reporter.set_service_status(svc, status).await;
        }
        tokio::select! {
            changed = synced.changed() => if changed.is_err() { return },
            changed = draining.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

async fn metrics_handler(State(a): State<Admin>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], a.metrics.render())
}

async fn readyz(State(a): State<Admin>) -> (StatusCode, &'static str) {
    if *a.draining.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if a.registry.is_synced() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "discovery has not synced")
    }
}

#[derive(serde::Deserialize)]
struct EndpointsQuery {
    model: Option<String>,
}

/// Models, their ready endpoints and in-flight counts: what the router sees now (`?model=` for one).
async fn endpoints_handler(
    State(a): State<Admin>,
    axum::extract::Query(q): axum::extract::Query<EndpointsQuery>,
) -> axum::Json<serde_json::Value> {
    let snap = a.registry.snapshot();
    let mut models: Vec<_> =
        snap.models.values().filter(|m| q.model.as_ref().is_none_or(|want| *want == m.name)).collect();
    models.sort_by(|x, y| x.name.cmp(&y.name));
    let out: Vec<serde_json::Value> = models
        .iter()
        .map(|m| {
            serde_json::json!({
                "model": m.name,
                "local_tokenizer": m.tokenizer.is_some(),
                // Whether the local tokenizer gave a pod's /tokenize tokens (null: not checked yet).
                "local_tokenizer_engine_equal": m.tokenizer.as_ref().and_then(|t| a.equality.verdict(&m.name, t.fingerprint())),
                "endpoints": m.endpoints.iter().map(|e| serde_json::json!({
                    "address": e.addr.to_string(), "engine": format!("{:?}", e.engine).to_lowercase(),
                    "inflight": e.inflight(), "routable": e.is_routable(), "trust": e.trust().label(),
                    "event_blocks": a.router.event_blocks(&m.name, e.id),
                    // The pod's KV cache in tokens, from its vllm:cache_config_info (null: not known yet).
                    "cache_tokens": e.cache_tokens(),
                    // Whether others send the pod requests too (--placement auto): counting, alone,
                    // shared, unknown.
                    "traffic": e.traffic().label(), "routed": e.routed(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "models": out }))
}

#[derive(serde::Deserialize)]
struct DecisionsQuery {
    limit: Option<usize>,
}

/// The latest route receipts, newest first (`?limit=N`, default 50): why each request went where it
/// went, without prompt text.
async fn decisions_handler(
    State(a): State<Admin>,
    axum::extract::Query(q): axum::extract::Query<DecisionsQuery>,
) -> axum::Json<serde_json::Value> {
    let receipts = a.router.receipts(q.limit.unwrap_or(50));
    let list: Vec<&crate::routing::receipt::Receipt> = receipts.iter().map(|r| &**r).collect();
    axum::Json(serde_json::json!({ "decisions": list }))
}

#[derive(serde::Deserialize)]
struct TokenizeQuery {
    path: Option<String>,
}

/// The token ids and token space the router would route this body with (POST the request body;
/// `?path=` the request path, default `/v1/chat/completions`). For operators asking why a request
/// missed; nothing is logged or recorded.
async fn tokenize_handler(
    State(a): State<Admin>,
    axum::extract::Query(q): axum::extract::Query<TokenizeQuery>,
    body: axum::body::Bytes,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let path = q.path.as_deref().unwrap_or("/v1/chat/completions");
    let req = match crate::openai::parse(crate::openai::endpoint_of(path), &body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({"error": e.to_string()}))),
    };
    match a.router.tokens_for(&req).await {
        Ok(t) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"space": t.space.label(), "count": t.ids.len(), "tokens": t.ids})),
        ),
        Err(e) => (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({"error": e.to_string()}))),
    }
}
