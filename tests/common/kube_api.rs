//! A Kubernetes API server stand-in that speaks the list/watch protocol the way kube-rs's watcher
//! uses it, for pods and InferencePools: `GET /api/v1/namespaces/{ns}/pods` (and `/api/v1/pods`),
//! `/apis/inference.networking.k8s.io/v1/namespaces/{ns}/inferencepools` with `labelSelector` and
//! `fieldSelector=metadata.name=…`,
//! lists carrying `metadata.resourceVersion`, `?watch=true&resourceVersion=N` streaming JSON lines of
//! ADDED/MODIFIED/DELETED events after N, BOOKMARKs when asked, `410 Gone` (an ERROR event with an
//! Expired Status) for a resourceVersion older than the last compaction. It can go away (refusing
//! connections, failing requests on open ones) and come back on the same port.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// (resource, namespace, name)
type Key = (&'static str, String, String);

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change: (rv, type, resource, object); events at or below `compacted` are gone.
    history: Vec<(u64, &'static str, &'static str, Value)>,
    compacted: u64,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<(u64, &'static str, &'static str, Value)>,
    up: AtomicBool,
    lists: std::sync::atomic::AtomicU64,
}

pub(crate) struct KubeApi {
    shared: Arc<Shared>,
    pub addr: SocketAddr,
    server: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) fn pod(ns: &str, name: &str, model: &str, ip: Option<&str>, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                     "labels": {"model.aibrix.ai/name": model, "model.aibrix.ai/engine": "vllm"},
                     "annotations": {"model.aibrix.ai/port": "8000"}},
        "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

/// An InferencePool selecting `labels` on `ports`.
pub(crate) fn inference_pool(ns: &str, name: &str, labels: Value, ports: &[u16]) -> Value {
    let ports: Vec<Value> = ports.iter().map(|p| json!({"number": p})).collect();
    json!({
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-pool-{ns}-{name}")},
        "spec": {"selector": {"matchLabels": labels}, "targetPorts": ports,
                 "endpointPickerRef": {"name": "prefix-router-epp", "port": {"number": 9002}}}
    })
}

fn resource_of(obj: &Value) -> &'static str {
    match obj["kind"].as_str() {
        Some("InferencePool") => "inferencepools",
        _ => "pods",
    }
}

fn list_meta(resource: &str) -> (&'static str, &'static str, &'static str) {
    match resource {
        "inferencepools" => ("inference.networking.k8s.io/v1", "InferencePoolList", "InferencePool"),
        _ => ("v1", "PodList", "Pod"),
    }
}

fn fields_match(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| match term.split_once('=') {
        Some(("metadata.name", v)) => obj["metadata"]["name"].as_str() == Some(v.trim_start_matches('=')),
        _ => true,
    })
}

fn matches(selector: &str, pod: &Value) -> bool {
    let labels = pod["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    selector.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels.get(k).and_then(Value::as_str) != Some(v)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.get(k).and_then(Value::as_str) == Some(v)
        } else if let Some(k) = term.strip_prefix('!') {
            !labels.contains_key(k)
        } else {
            labels.contains_key(term)
        }
    })
}

impl KubeApi {
    pub(crate) async fn start() -> KubeApi {
        let (changes, _) = broadcast::channel(100_000);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changes,
            up: AtomicBool::new(true),
            lists: Default::default(),
        });
        let mut api = KubeApi { shared, addr: "127.0.0.1:0".parse().expect("addr"), server: None };
        api.serve().await;
        api
    }

    async fn serve(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.expect("bind stand-in");
        self.addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .route("/api/v1/namespaces/{ns}/pods", axum::routing::get(namespaced))
            .route("/api/v1/pods", axum::routing::get(all))
            .route("/apis/inference.networking.k8s.io/v1/namespaces/{ns}/inferencepools", axum::routing::get(pools))
            .with_state(Arc::clone(&self.shared));
        self.shared.up.store(true, Ordering::SeqCst);
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    /// Gone: new connections refused, requests on open connections fail, watches end.
    pub(crate) fn stop(&mut self) {
        self.shared.up.store(false, Ordering::SeqCst);
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }

    pub(crate) async fn restart(&mut self) {
        self.serve().await;
    }

    /// Creates or replaces a pod or an InferencePool (ADDED or MODIFIED).
    pub(crate) fn apply(&self, mut obj: Value) {
        let mut st = self.shared.store.lock().expect("store");
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let resource = resource_of(&obj);
        let key = (
            resource,
            obj["metadata"]["namespace"].as_str().unwrap_or("default").to_owned(),
            obj["metadata"]["name"].as_str().expect("name").to_owned(),
        );
        let kind = if st.objects.insert(key, obj.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        st.history.push((rv, kind, resource, obj.clone()));
        let _ = self.shared.changes.send((rv, kind, resource, obj));
    }

    /// Deletes a pod.
    pub(crate) fn delete(&self, ns: &str, name: &str) {
        self.delete_of("pods", ns, name);
    }

    /// Deletes an object of `resource` (`pods`, `inferencepools`).
    pub(crate) fn delete_of(&self, resource: &'static str, ns: &str, name: &str) {
        let mut st = self.shared.store.lock().expect("store");
        let Some(mut obj) = st.objects.remove(&(resource, ns.to_owned(), name.to_owned())) else { return };
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.history.push((rv, "DELETED", resource, obj.clone()));
        let _ = self.shared.changes.send((rv, "DELETED", resource, obj));
    }

    /// Forgets history: watches from an older resourceVersion now get 410 Gone.
    pub(crate) fn compact(&self) {
        let mut st = self.shared.store.lock().expect("store");
        st.compacted = st.rv;
        st.history.clear();
    }

    /// How many list calls were served (a relist shows as one more).
    pub(crate) fn lists(&self) -> u64 {
        self.shared.lists.load(Ordering::SeqCst)
    }

    /// A kubeconfig pointing at this stand-in, namespace `ns`.
    pub(crate) fn kubeconfig(&self, dir: &std::path::Path, ns: &str) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: http://{}\nusers:\n- name: u\n  user:\n    token: test\ncontexts:\n- name: c\n  context:\n    cluster: stand-in\n    user: u\n    namespace: {ns}\ncurrent-context: c\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

async fn namespaced(
    State(s): State<Arc<Shared>>,
    Path(ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    handle(s, "pods", Some(ns), q).await
}

async fn all(State(s): State<Arc<Shared>>, Query(q): Query<HashMap<String, String>>) -> Response {
    handle(s, "pods", None, q).await
}

async fn pools(
    State(s): State<Arc<Shared>>,
    Path(ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    handle(s, "inferencepools", Some(ns), q).await
}

async fn handle(s: Arc<Shared>, resource: &'static str, ns: Option<String>, q: HashMap<String, String>) -> Response {
    if !s.up.load(Ordering::SeqCst) {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "stand-in is down").into_response();
    }
    let selector = q.get("labelSelector").cloned().unwrap_or_default();
    let fields = q.get("fieldSelector").cloned().unwrap_or_default();
    let (api_version, list_kind, kind) = list_meta(resource);
    let in_scope = move |res: &str, obj: &Value| {
        res == resource
            && ns.as_deref().is_none_or(|n| obj["metadata"]["namespace"].as_str() == Some(n))
            && matches(&selector, obj)
            && fields_match(&fields, obj)
    };
    if q.get("watch").map(String::as_str) != Some("true") {
        s.lists.fetch_add(1, Ordering::SeqCst);
        let st = s.store.lock().expect("store");
        let items: Vec<&Value> = st.objects.iter().filter(|(k, o)| in_scope(k.0, o)).map(|(_, o)| o).collect();
        let body = json!({"apiVersion": api_version, "kind": list_kind,
            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
        return axum::Json(body).into_response();
    }
    let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = q.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290u64).min(30);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(1024);
    let line = |kind: &str, obj: &Value| format!("{}\n", json!({"type": kind, "object": obj}));
    let (backlog, mut live) = {
        let st = s.store.lock().expect("store");
        if from < st.compacted {
            let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from} ({})", st.compacted), "reason": "Expired", "code": 410});
            let _ = tx.try_send(Ok(line("ERROR", &gone)));
            drop(tx);
            return Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)));
        }
        let backlog: Vec<(u64, &'static str, &'static str, Value)> =
            st.history.iter().filter(|(rv, _, res, o)| *rv > from && in_scope(res, o)).cloned().collect();
        (backlog, s.changes.subscribe())
    };
    tokio::spawn(async move {
        let mut last = from;
        for (rv, kind, _, pod) in backlog {
            if !s.up.load(Ordering::SeqCst) {
                return;
            }
            last = rv;
            if tx.send(Ok(line(kind, &pod))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        loop {
            tokio::select! {
                change = live.recv() => {
                    let Ok((rv, kind, res, pod)) = change else { return };
                    if !s.up.load(Ordering::SeqCst) { return; }
                    if rv > last && in_scope(res, &pod) {
                        last = rv;
                        if tx.send(Ok(line(kind, &pod))).await.is_err() { return; }
                    }
                }
                _ = tick.tick() => {
                    if !s.up.load(Ordering::SeqCst) { return; }
                    if bookmarks {
                        let rv = s.store.lock().expect("store").rv;
                        let mark = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}});
                        if tx.send(Ok(line("BOOKMARK", &mark))).await.is_err() { return; }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
}
