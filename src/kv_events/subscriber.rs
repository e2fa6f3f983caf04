//! One pod's KV-event subscription, kept in step with its engine:
//! - connect: SUB on each data-parallel rank's endpoint, then replay from 0 — a replay that starts
//!   at seq 0 is the engine's whole history, so the pod's index is rebuilt from it;
//! - live: apply each batch in order; a gap (seq > last + 1) replays from last + 1; seq going
//!   backwards means the engine restarted: forget the pod and replay from 0;
//! - a replay that fails, times out or cannot reach back far enough leaves the pod `degraded`
//!   (routing uses history for it) until the next reconnect syncs it again;
//! - the connection dropping (a restart, a network cut) makes the pod `degraded` until resynced.
//!
//! The subscriber only decodes and hands plain changes to the router; it holds no index itself.

use super::decode;
use super::Sink;
use crate::discovery::{Endpoint, Trust};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use zeromq::{Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

/// Where one data-parallel rank publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub endpoint: String,
    pub replay: Option<String>,
    pub topic: String,
}

/// How the subscriber connects and how long it waits.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoint_template: String,
    pub replay_template: Option<String>,
    pub replay_timeout: Duration,
    /// How often a pod without events is asked again for its sources.
    pub rediscover: Duration,
}

/// What a pod said about its events.
enum Resolved {
    /// One source per data-parallel rank (empty: events are off there).
    Sources(Vec<Source>),
    /// The pod did not answer: try again later.
    Unreachable,
}

/// `GET /kv_event_sources` → one source per rank (`*` is the pod's address); an engine that does
/// not serve it (404) is assumed to publish where the templates say.
async fn resolve(http: &reqwest::Client, pod: &Endpoint, s: &Settings) -> Resolved {
    let url = format!("http://{}/kv_event_sources", pod.addr);
    let ip = match pod.addr.ip() {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 @ std::net::IpAddr::V4(_) => v4.to_string(),
    };
    let port = pod.addr.port().to_string();
    let fill =
        |t: &str| t.replace("{ip}", &ip).replace("{port}", &port).replacen("tcp://*:", &format!("tcp://{ip}:"), 1);
    let served = match http.get(&url).send().await {
        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => None,
        Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
            Ok(v) => Some(v),
            Err(_) => return Resolved::Unreachable,
        },
        _ => return Resolved::Unreachable,
    };
    let Some(served) = served else {
        return Resolved::Sources(vec![Source {
            endpoint: fill(&s.endpoint_template),
            replay: s.replay_template.as_deref().map(fill),
            topic: String::new(),
        }]);
    };
    let Some(ranks) = served.as_object() else { return Resolved::Sources(Vec::new()) };
    let mut ranks: Vec<(u64, Source)> = ranks
        .iter()
        .filter_map(|(rank, c)| {
            let enabled = c.get("enable_kv_cache_events").and_then(serde_json::Value::as_bool).unwrap_or(false);
            let endpoint = c.get("endpoint")?.as_str()?;
            enabled.then(|| {
                let replay = c.get("replay_endpoint").and_then(serde_json::Value::as_str).map(fill);
                let topic = c.get("topic").and_then(serde_json::Value::as_str).unwrap_or("").to_owned();
                (rank.parse().unwrap_or(0), Source { endpoint: fill(endpoint), replay, topic })
            })
        })
        .collect();
    ranks.sort_by_key(|r| r.0);
    Resolved::Sources(ranks.into_iter().map(|r| r.1).collect())
}

/// Follows one pod until `stop`: every rank it lists, reconnecting with backoff.
pub async fn follow(
    pod: Arc<Endpoint>,
    sink: Arc<dyn Sink>,
    s: Settings,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(http) = reqwest::Client::builder().timeout(Duration::from_secs(2)).build() else { return };
    loop {
        let sources = tokio::select! {
            r = resolve(&http, &pod, &s) => r,
            _ = stop.changed() => return,
        };
        match sources {
            Resolved::Sources(sources) if !sources.is_empty() => {
                // Several ranks behind one pod: their caches are one view for routing.
                let ranks =
                    sources.into_iter().map(|src| rank(Arc::clone(&pod), Arc::clone(&sink), src, s.replay_timeout));
                tokio::select! {
                    () = async { futures::future::join_all(ranks).await; } => {}
                    _ = stop.changed() => return,
                }
            }
            _ => {
                pod.set_trust(Trust::History);
                tokio::select! {
                    () = tokio::time::sleep(s.rediscover) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// One rank, forever: connect, sync, follow; on loss, back off and again.
async fn rank(pod: Arc<Endpoint>, sink: Arc<dyn Sink>, src: Source, replay_timeout: Duration) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // Poll the port ourselves (every 100 ms): the ZMQ connect backs off by seconds.
        wait_reachable(&src.endpoint).await;
        let mut opts = SocketOptions::default();
        opts.connect_timeout(Duration::from_secs(2));
        let mut sub = zeromq::SubSocket::with_options(opts);
        // A disconnect (the publisher restarting, most often) is seen on the monitor: we then
        // reconnect ourselves and replay from 0, rather than let the socket reconnect silently
        // and miss what the new process sent first.
        let mut monitor = sub.monitor();
        if sub.connect(&src.endpoint).await.is_err() || sub.subscribe(&src.topic).await.is_err() {
            pod.set_trust(Trust::History);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(3));
            continue;
        }
        backoff = Duration::from_millis(100);
        let mut state = RankState { last: None };
        let synced = state.sync(&pod, &*sink, &src, replay_timeout, 0).await;
        pod.set_trust(if synced { Trust::Exact } else { Trust::Degraded });
        loop {
            let msg = tokio::select! {
                m = sub.recv() => m,
                event = futures::StreamExt::next(&mut monitor) => {
                    match event {
                        Some(zeromq::SocketEvent::Disconnected(_)) => {
                            // Until resynced, what we hold may be stale (a restart empties the
                            // cache). Reconnect on our own schedule and replay from 0.
                            tracing::info!(pod = %pod.addr, endpoint = %src.endpoint, "KV events: publisher disconnected");
                            pod.set_trust(Trust::Degraded);
                            break;
                        }
                        Some(_) => {}
                        None => break,
                    }
                    continue;
                }
            };
            let Ok(msg) = msg else { break };
            let frames = msg.into_vec();
            let (Some(seq), Some(payload)) = (frames.get(1).and_then(|f| seq_of(f)), frames.get(2)) else { continue };
            match state.last {
                Some(last) if seq <= last => {
                    if seq < last {
                        // The engine restarted (seq begins at 0 in every process).
                        tracing::info!(pod = %pod.addr, seq, last, "KV events: sequence went back; engine restarted, resyncing");
                        sink.forget(&pod);
                        state.last = None;
                        let ok = state.sync(&pod, &*sink, &src, replay_timeout, 0).await;
                        pod.set_trust(if ok { Trust::Exact } else { Trust::Degraded });
                        // The batch in hand may be newer than what the replay brought.
                        if state.last.is_none_or(|l| seq > l) {
                            state.apply(&pod, &*sink, seq, payload);
                        }
                    }
                }
                Some(last) if seq > last + 1 => {
                    sink.counted("gap");
                    let ok = state.sync(&pod, &*sink, &src, replay_timeout, last + 1).await;
                    if !ok {
                        pod.set_trust(Trust::Degraded);
                    }
                    if state.last.is_none_or(|l| seq > l) {
                        state.apply(&pod, &*sink, seq, payload);
                    }
                }
                _ => state.apply(&pod, &*sink, seq, payload),
            }
        }
        // The publisher went away: until resynced, what we hold may be stale.
        pod.set_trust(Trust::Degraded);
        sink.counted("reconnects");
        drop(sub);
    }
}

/// Returns once a TCP connection to the endpoint's port succeeds (tried every 100 ms).
async fn wait_reachable(endpoint: &str) {
    let Some(addr) = endpoint.strip_prefix("tcp://") else { return };
    loop {
        let attempt = tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await;
        if matches!(attempt, Ok(Ok(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct RankState {
    last: Option<u64>,
}

impl RankState {
    fn apply(&mut self, pod: &Endpoint, sink: &dyn Sink, seq: u64, payload: &[u8]) {
        match decode::batch(payload) {
            Ok(batch) => sink.apply(pod, &batch),
            Err(e) => {
                sink.counted("undecodable");
                tracing::debug!(pod = %pod.addr, seq, error = %e, "KV events: batch skipped");
            }
        }
        self.last = Some(self.last.map_or(seq, |l| l.max(seq)));
    }

    /// Replays from `from`; true when what we hold is complete again. From 0, a replay that
    /// starts at seq 0 (or is empty: nothing was ever published) rebuilds the pod from scratch.
    async fn sync(&mut self, pod: &Endpoint, sink: &dyn Sink, src: &Source, timeout: Duration, from: u64) -> bool {
        let Some(replay) = &src.replay else {
            // No replay: from 0 we start empty and trust what comes; a gap cannot be repaired.
            if from == 0 {
                sink.forget(pod);
            }
            sink.counted(if from == 0 { "replay_none" } else { "replay_unavailable" });
            return from == 0;
        };
        let batches = match tokio::time::timeout(timeout, fetch(replay, from)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                sink.counted("replay_failed");
                tracing::warn!(pod = %pod.addr, replay = %replay, error = %e, "KV events: replay failed; pod degraded");
                return false;
            }
            Err(_) => {
                sink.counted("replay_timeout");
                tracing::warn!(pod = %pod.addr, replay = %replay, "KV events: replay timed out; pod degraded");
                return false;
            }
        };
        let first = batches.first().map(|b| b.0);
        let complete = match (from, first) {
            (0, None | Some(0)) => {
                sink.forget(pod);
                true
            }
            (_, None) => true,
            (_, Some(f)) => f <= self.last.map_or(0, |l| l + 1),
        };
        if !complete {
            sink.counted("replay_incomplete");
            tracing::warn!(pod = %pod.addr, from, first = ?first, "KV events: replay cannot reach back far enough; pod degraded");
        }
        for (seq, payload) in batches {
            if self.last.is_none_or(|l| seq > l) {
                self.apply(pod, sink, seq, &payload);
            }
        }
        sink.counted(if complete { "replay_ok" } else { "replay_partial" });
        complete
    }
}

fn seq_of(frame: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(frame).ok().map(u64::from_be_bytes)
}

/// Asks a replay socket for every buffered batch from `from`; both reply layouts (with and
/// without the topic frame) are read.
pub async fn fetch(endpoint: &str, from: u64) -> Result<Vec<(u64, Bytes)>, String> {
    let mut opts = SocketOptions::default();
    opts.connect_timeout(Duration::from_secs(2));
    let mut dealer = zeromq::DealerSocket::with_options(opts);
    dealer.connect(endpoint).await.map_err(|e| e.to_string())?;
    let ask = ZmqMessage::try_from(vec![Bytes::new(), Bytes::copy_from_slice(&from.to_be_bytes())])
        .map_err(|e| e.to_string())?;
    dealer.send(ask).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    loop {
        let msg = dealer.recv().await.map_err(|e| e.to_string())?;
        let mut frames = msg.into_vec();
        if frames.first().is_some_and(Bytes::is_empty) {
            frames.remove(0);
        }
        // [topic, seq, payload] (vLLM ≥ 0.26) or [seq, payload] (older).
        let (seq, payload) = match frames.len() {
            3 => (seq_of(&frames[1]), frames.pop()),
            2 => (seq_of(&frames[0]), frames.pop()),
            _ => (None, None),
        };
        let Some(seq) = seq else { return Err("malformed replay frame".into()) };
        if seq == u64::MAX {
            return Ok(out);
        }
        out.push((seq, payload.unwrap_or_default()));
    }
}
