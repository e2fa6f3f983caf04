//! KV-cache events as vLLM 0.33 publishes them (`--kv-events-config`): a ZMQ PUB socket sending
//! `[topic, seq (u64 big-endian, from 0 in every process), msgpack KVEventBatch]`, one batch per
//! engine step that changed the cache, and a ROUTER socket that replays the last `buffer_steps`
//! batches to a DEALER asking from a sequence number, ending with `[b"", 0xff×8, b""]`.
//!
//! The batch is a positional array `[ts: f64, events, data_parallel_rank]`; each event a map with
//! its `"type"`: `BlockStored` (block hashes, parent, token ids, block size, `lora_id` nil, medium,
//! `lora_name`, and `extra_keys` when any block has extras), `BlockRemoved` (one block), or
//! `AllBlocksCleared`.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

/// vLLM's `KVEventsConfig`, with its defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KvEventsConfig {
    #[serde(default)]
    pub enable_kv_cache_events: bool,
    #[serde(default)]
    pub publisher: Option<String>,
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    #[serde(default)]
    pub replay_endpoint: Option<String>,
    #[serde(default = "default_buffer_steps")]
    pub buffer_steps: usize,
    #[serde(default = "default_hwm")]
    pub hwm: u64,
    #[serde(default = "default_hwm")]
    pub max_queue_size: u64,
    #[serde(default)]
    pub topic: String,
}

fn default_endpoint() -> String {
    "tcp://*:5557".into()
}
fn default_buffer_steps() -> usize {
    10_000
}
fn default_hwm() -> u64 {
    100_000
}

impl KvEventsConfig {
    /// Parses the flag's JSON; `publisher` defaults to `zmq` when events are on (`null` when off).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut c: Self = serde_json::from_str(s).map_err(|e| format!("--kv-events-config: {e}"))?;
        if c.publisher.is_none() {
            c.publisher = Some(if c.enable_kv_cache_events { "zmq" } else { "null" }.into());
        }
        match c.publisher.as_deref() {
            Some("zmq" | "null") => Ok(c),
            Some(other) => Err(format!("--kv-events-config: publisher '{other}' is not supported (zmq, null)")),
            None => Ok(c),
        }
    }

    pub fn publishes(&self) -> bool {
        self.enable_kv_cache_events && self.publisher.as_deref() == Some("zmq")
    }

    /// `GET /kv_event_sources`: the resolved config per data-parallel rank (one rank here).
    pub fn sources(&self) -> Value {
        if !self.publishes() {
            return json!({});
        }
        json!({"0": {
            "enable_kv_cache_events": self.enable_kv_cache_events,
            "publisher": self.publisher,
            "endpoint": self.endpoint,
            "replay_endpoint": self.replay_endpoint,
            "buffer_steps": self.buffer_steps,
            "hwm": self.hwm,
            "max_queue_size": self.max_queue_size,
            "topic": self.topic,
        }})
    }
}

/// One change to the cache.
#[derive(Debug, Clone, PartialEq)]
pub enum KvEvent {
    Stored {
        block_hashes: Vec<u64>,
        parent: Option<u64>,
        token_ids: Vec<u32>,
        block_size: usize,
        lora_name: Option<String>,
        /// Per block: nil or the untagged extra values (vLLM's `to_event_extra_keys`).
        extra_keys: Option<Vec<Option<Vec<String>>>>,
    },
    Removed {
        hash: u64,
    },
    AllCleared,
}

fn str_(out: &mut Vec<u8>, s: &str) {
    let _ = rmp::encode::write_str(out, s);
}

fn encode_event(out: &mut Vec<u8>, e: &KvEvent) {
    match e {
        KvEvent::Stored { block_hashes, parent, token_ids, block_size, lora_name, extra_keys } => {
            let _ = rmp::encode::write_map_len(out, if extra_keys.is_some() { 9 } else { 8 });
            str_(out, "type");
            str_(out, "BlockStored");
            str_(out, "block_hashes");
            let _ = rmp::encode::write_array_len(out, block_hashes.len() as u32);
            for h in block_hashes {
                let _ = rmp::encode::write_uint(out, *h);
            }
            str_(out, "parent_block_hash");
            match parent {
                Some(p) => {
                    let _ = rmp::encode::write_uint(out, *p);
                }
                None => {
                    let _ = rmp::encode::write_nil(out);
                }
            }
            str_(out, "token_ids");
            let _ = rmp::encode::write_array_len(out, token_ids.len() as u32);
            for t in token_ids {
                let _ = rmp::encode::write_uint(out, u64::from(*t));
            }
            str_(out, "block_size");
            let _ = rmp::encode::write_uint(out, *block_size as u64);
            str_(out, "lora_id");
            let _ = rmp::encode::write_nil(out);
            str_(out, "medium");
            str_(out, "GPU");
            str_(out, "lora_name");
            match lora_name {
                Some(l) => str_(out, l),
                None => {
                    let _ = rmp::encode::write_nil(out);
                }
            }
            if let Some(keys) = extra_keys {
                str_(out, "extra_keys");
                let _ = rmp::encode::write_array_len(out, keys.len() as u32);
                for k in keys {
                    match k {
                        Some(values) => {
                            let _ = rmp::encode::write_array_len(out, values.len() as u32);
                            for v in values {
                                str_(out, v);
                            }
                        }
                        None => {
                            let _ = rmp::encode::write_nil(out);
                        }
                    }
                }
            }
        }
        KvEvent::Removed { hash } => {
            let _ = rmp::encode::write_map_len(out, 3);
            str_(out, "type");
            str_(out, "BlockRemoved");
            str_(out, "block_hashes");
            let _ = rmp::encode::write_array_len(out, 1);
            let _ = rmp::encode::write_uint(out, *hash);
            str_(out, "medium");
            str_(out, "GPU");
        }
        KvEvent::AllCleared => {
            let _ = rmp::encode::write_map_len(out, 1);
            str_(out, "type");
            str_(out, "AllBlocksCleared");
        }
    }
}

/// The msgpack `KVEventBatch`: `[ts, events, data_parallel_rank]`.
pub fn encode_batch(ts: f64, events: &[KvEvent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + events.len() * 64);
    let _ = rmp::encode::write_array_len(&mut out, 3);
    let _ = rmp::encode::write_f64(&mut out, ts);
    let _ = rmp::encode::write_array_len(&mut out, events.len() as u32);
    for e in events {
        encode_event(&mut out, e);
    }
    let _ = rmp::encode::write_uint(&mut out, 0);
    out
}

/// Where the engine hands its steps' events; empty steps are not published.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Vec<KvEvent>>,
}

impl Publisher {
    pub fn publish(&self, events: Vec<KvEvent>) {
        if !events.is_empty() {
            let _ = self.tx.send(events);
        }
    }
}

type Buffer = Arc<Mutex<VecDeque<(u64, Bytes)>>>;

/// `tcp://*:p` binds every interface (vLLM's meaning); anything else binds as written.
fn bindable(endpoint: &str) -> String {
    endpoint.replacen("tcp://*:", "tcp://0.0.0.0:", 1)
}

/// Binds the sockets and starts the publishing tasks. Returns the publisher and the config with
/// any port 0 replaced by the port bound (what `/kv_event_sources` reports).
pub async fn start(mut cfg: KvEventsConfig) -> Result<(Publisher, KvEventsConfig), String> {
    let mut pub_socket = zeromq::PubSocket::new();
    let bound =
        pub_socket.bind(&bindable(&cfg.endpoint)).await.map_err(|e| format!("KV events {}: {e}", cfg.endpoint))?;
    cfg.endpoint = with_port(&cfg.endpoint, &bound);
    let buffer: Buffer = Arc::new(Mutex::new(VecDeque::new()));
    if let Some(replay) = cfg.replay_endpoint.clone() {
        let mut router = zeromq::RouterSocket::new();
        let bound = router.bind(&bindable(&replay)).await.map_err(|e| format!("KV events replay {replay}: {e}"))?;
        cfg.replay_endpoint = Some(with_port(&replay, &bound));
        // Owned by the process: ends when the socket fails.
        tokio::spawn(serve_replay(router, Arc::clone(&buffer), cfg.topic.clone()));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(publish_loop(pub_socket, rx, buffer, cfg.topic.clone(), cfg.buffer_steps));
    Ok((Publisher { tx }, cfg))
}

fn with_port(configured: &str, bound: &zeromq::Endpoint) -> String {
    match (configured.rsplit_once(':'), bound) {
        (Some((host, "0")), zeromq::Endpoint::Tcp(_, port)) => format!("{host}:{port}"),
        _ => configured.to_owned(),
    }
}

async fn publish_loop(
    mut socket: zeromq::PubSocket,
    mut rx: mpsc::UnboundedReceiver<Vec<KvEvent>>,
    buffer: Buffer,
    topic: String,
    buffer_steps: usize,
) {
    let mut seq: u64 = 0;
    while let Some(events) = rx.recv().await {
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let payload = Bytes::from(encode_batch(ts, &events));
        {
            let mut b = buffer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            b.push_back((seq, payload.clone()));
            while b.len() > buffer_steps {
                b.pop_front();
            }
        }
        let frames = vec![Bytes::from(topic.clone().into_bytes()), Bytes::copy_from_slice(&seq.to_be_bytes()), payload];
        if let Ok(msg) = ZmqMessage::try_from(frames) {
            // PUB drops what no subscriber takes, as libzmq does.
            let _ = socket.send(msg).await;
        }
        seq += 1;
    }
}

async fn serve_replay(mut socket: zeromq::RouterSocket, buffer: Buffer, topic: String) {
    loop {
        let Ok(msg) = socket.recv().await else { return };
        let frames = msg.into_vec();
        // [identity, b"", start_seq]
        let (Some(id), Some(start)) = (frames.first(), frames.last()) else { continue };
        let Ok(start) = <[u8; 8]>::try_from(start.as_ref()).map(u64::from_be_bytes) else { continue };
        let batches: Vec<(u64, Bytes)> = buffer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(s, _)| *s >= start)
            .cloned()
            .collect();
        for (seq, payload) in batches {
            let frames = vec![
                id.clone(),
                Bytes::new(),
                Bytes::from(topic.clone().into_bytes()),
                Bytes::copy_from_slice(&seq.to_be_bytes()),
                payload,
            ];
            if let Ok(reply) = ZmqMessage::try_from(frames) {
                let _ = socket.send(reply).await;
            }
        }
        let end = vec![id.clone(), Bytes::new(), Bytes::new(), Bytes::from_static(&[0xff; 8]), Bytes::new()];
        if let Ok(reply) = ZmqMessage::try_from(end) {
            let _ = socket.send(reply).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_are_vllm_s_and_sources_show_all_eight_fields() {
        let c = KvEventsConfig::parse(r#"{"enable_kv_cache_events": true}"#).expect("parses");
        assert_eq!((c.endpoint.as_str(), c.buffer_steps, c.topic.as_str()), ("tcp://*:5557", 10_000, ""));
        assert_eq!(c.publisher.as_deref(), Some("zmq"));
        let s = c.sources();
        let keys: Vec<&str> = s["0"].as_object().expect("rank 0").keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 8, "{keys:?}");
        assert_eq!(s["0"]["endpoint"], "tcp://*:5557", "the * host is kept");
        assert_eq!(KvEventsConfig::parse("{}").expect("parses").sources(), json!({}));
        assert!(KvEventsConfig::parse(r#"{"typo": 1}"#).is_err());
    }

    #[test]
    fn a_batch_is_a_positional_array_of_typed_maps() {
        let bytes = encode_batch(
            1.5,
            &[
                KvEvent::Removed { hash: u64::MAX },
                KvEvent::Stored {
                    block_hashes: vec![7],
                    parent: None,
                    token_ids: (1..=4).collect(),
                    block_size: 4,
                    lora_name: None,
                    extra_keys: Some(vec![Some(vec!["tenant-a".into()])]),
                },
                KvEvent::AllCleared,
            ],
        );
        // [ts, [events…], 0]
        assert_eq!(bytes[0], 0x93);
        assert_eq!(&bytes[1..10], &[0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[10], 0x93, "three events");
        assert_eq!(bytes[11], 0x83, "BlockRemoved: type, block_hashes, medium");
        assert_eq!(*bytes.last().expect("rank"), 0x00);
        let as_text = String::from_utf8_lossy(&bytes);
        for needle in
            ["BlockRemoved", "BlockStored", "AllBlocksCleared", "parent_block_hash", "extra_keys", "tenant-a", "GPU"]
        {
            assert!(as_text.contains(needle), "{needle}");
        }
    }
}
