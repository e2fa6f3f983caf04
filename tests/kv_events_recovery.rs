//! The subscriber's recovery rules against a scripted engine that speaks vLLM's KV-event wire
//! (ZMQ PUB + ROUTER replay, msgpack batches): replay from 0 on connect, a gap replayed from
//! last + 1, a replay that cannot reach back leaving the pod degraded — with both replay layouts
//! (with and without the topic frame) and positional (pre-0.26) events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use prefix_router::discovery::{Endpoint, EndpointSpec, Engine, ModelSpec, Registry, Trust};
use prefix_router::kv_events::{decode, subscriber, Sink};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

/// Each batch's timestamp is its seq, so the sink can tell which batches arrived, in what order.
fn payload(seq: u64) -> Bytes {
    let stored = rmpv::Value::Array(vec![
        "BlockStored".into(),
        rmpv::Value::Array(vec![rmpv::Value::from(1000 + seq)]),
        if seq == 0 { rmpv::Value::Nil } else { rmpv::Value::from(999 + seq) },
        rmpv::Value::Array((0..4).map(|t| rmpv::Value::from(seq * 10 + t)).collect()),
        rmpv::Value::from(4),
    ]);
    let batch =
        rmpv::Value::Array(vec![rmpv::Value::F64(seq as f64), rmpv::Value::Array(vec![stored]), rmpv::Value::from(0)]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &batch).expect("encode");
    Bytes::from(out)
}

#[derive(Default)]
struct Recorder {
    seqs: Mutex<Vec<u64>>,
    forgets: Mutex<usize>,
    counts: Mutex<Vec<&'static str>>,
}

impl Sink for Recorder {
    fn apply(&self, _pod: &Endpoint, batch: &decode::Batch) {
        assert_eq!(batch.changes.len(), 1, "positional events decode");
        self.seqs.lock().unwrap().push(batch.ts as u64);
    }
    fn forget(&self, _pod: &Endpoint) {
        *self.forgets.lock().unwrap() += 1;
    }
    fn counted(&self, what: &'static str) {
        self.counts.lock().unwrap().push(what);
    }
}

struct Engine_ {
    pub_socket: zeromq::PubSocket,
    buffer: Arc<Mutex<BTreeMap<u64, Bytes>>>,
    pub_endpoint: String,
    replay_endpoint: String,
}

impl Engine_ {
    async fn start(with_topic: bool) -> Engine_ {
        let mut pub_socket = zeromq::PubSocket::new();
        let bound = pub_socket.bind("tcp://127.0.0.1:0").await.expect("bind pub");
        let mut router = zeromq::RouterSocket::new();
        let replay = router.bind("tcp://127.0.0.1:0").await.expect("bind replay");
        let buffer: Arc<Mutex<BTreeMap<u64, Bytes>>> = Arc::default();
        let served = Arc::clone(&buffer);
        tokio::spawn(async move {
            while let Ok(msg) = router.recv().await {
                let frames = msg.into_vec();
                let id = frames[0].clone();
                let from = u64::from_be_bytes(frames.last().unwrap().as_ref().try_into().unwrap());
                let batches: Vec<(u64, Bytes)> =
                    served.lock().unwrap().range(from..).map(|(s, p)| (*s, p.clone())).collect();
                let reply = |seq: &[u8], payload: Bytes| {
                    let mut f = vec![id.clone(), Bytes::new()];
                    if with_topic {
                        f.push(Bytes::from_static(b"kv"));
                    }
                    f.push(Bytes::copy_from_slice(seq));
                    f.push(payload);
                    ZmqMessage::try_from(f).unwrap()
                };
                for (seq, p) in batches {
                    router.send(reply(&seq.to_be_bytes(), p)).await.unwrap();
                }
                router.send(reply(&[0xff; 8], Bytes::new())).await.unwrap();
            }
        });
        Engine_ { pub_socket, buffer, pub_endpoint: bound.to_string(), replay_endpoint: replay.to_string() }
    }

    /// Buffers `seq`; publishes it live too unless `silently` (a batch the subscriber misses).
    async fn batch(&mut self, seq: u64, silently: bool) {
        self.buffer.lock().unwrap().insert(seq, payload(seq));
        if !silently {
            let frames = vec![Bytes::from_static(b"kv"), Bytes::copy_from_slice(&seq.to_be_bytes()), payload(seq)];
            self.pub_socket.send(ZmqMessage::try_from(frames).unwrap()).await.unwrap();
        }
    }
}

/// A pod whose `/kv_event_sources` says where the scripted engine publishes.
async fn pod_serving(engine: &Engine_) -> Arc<Endpoint> {
    let sources = serde_json::json!({"0": {"enable_kv_cache_events": true, "publisher": "zmq",
        "endpoint": engine.pub_endpoint, "replay_endpoint": engine.replay_endpoint, "buffer_steps": 10000,
        "hwm": 100000, "max_queue_size": 100000, "topic": "kv"}});
    let app =
        axum::Router::new().route("/kv_event_sources", axum::routing::get(move || async move { axum::Json(sources) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let registry = Registry::new();
    registry.publish(vec![ModelSpec {
        name: "m".into(),
        tokenizer: None,
        endpoints: vec![EndpointSpec { key: "m/pod".into(), addr, engine: Engine::Vllm }],
    }]);
    Arc::clone(&registry.snapshot().models["m"].endpoints[0])
}

async fn until(what: &str, ok: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_zero_then_gaps_are_replayed_and_an_unrecoverable_gap_degrades() {
    for with_topic in [true, false] {
        let mut engine = Engine_::start(with_topic).await;
        engine.batch(0, true).await;
        engine.batch(1, true).await;
        let pod = pod_serving(&engine).await;
        let sink = Arc::new(Recorder::default());
        let settings = subscriber::Settings {
            endpoint_template: String::new(),
            replay_template: None,
            replay_timeout: Duration::from_secs(2),
            rediscover: Duration::from_secs(30),
        };
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(subscriber::follow(Arc::clone(&pod), Arc::clone(&sink) as Arc<dyn Sink>, settings, stop));
        until("synced from 0", || pod.trust() == Trust::Exact).await;
        assert_eq!(*sink.seqs.lock().unwrap(), vec![0, 1], "replayed from 0 on connect (topic frame: {with_topic})");
        assert_eq!(*sink.forgets.lock().unwrap(), 1, "a replay from seq 0 rebuilds the pod");

        // The SUB connection may take a moment after the replay: publish until it is heard.
        let mut seq = 2;
        engine.batch(seq, false).await;
        while !sink.seqs.lock().unwrap().contains(&2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            engine.batch(seq, false).await;
        }
        // 3 and 4 are missed live; 5 arrives: the gap is replayed from 3, in order.
        engine.batch(3, true).await;
        engine.batch(4, true).await;
        engine.batch(5, false).await;
        until("gap replayed", || sink.seqs.lock().unwrap().ends_with(&[3, 4, 5])).await;
        assert_eq!(pod.trust(), Trust::Exact);

        // The engine restarts behind the same socket: seq goes back to 0 (its replay buffer is the new
        // process's). The pod is forgotten and rebuilt from a replay from 0.
        let forgets = *sink.forgets.lock().unwrap();
        engine.buffer.lock().unwrap().clear();
        engine.batch(0, true).await;
        engine.batch(1, false).await;
        until("resynced after the seq regression", || *sink.forgets.lock().unwrap() > forgets).await;
        until("the new process's batches applied", || sink.seqs.lock().unwrap().ends_with(&[0, 1])).await;
        assert_eq!(pod.trust(), Trust::Exact);
        engine.batch(2, false).await;
        until("live again", || sink.seqs.lock().unwrap().ends_with(&[0, 1, 2])).await;
        seq = 2;

        // The buffer rolls over: the next two are gone from it when the third arrives. Degraded.
        engine.buffer.lock().unwrap().clear();
        engine.batch(seq + 3, false).await;
        until("degraded", || pod.trust() == Trust::Degraded).await;
        assert!(sink.counts.lock().unwrap().contains(&"replay_incomplete"), "{:?}", sink.counts.lock().unwrap());
    }
}
