//! vLLM's KV-event wire, read: a msgpack `KVEventBatch` `[ts, events, data_parallel_rank]` whose
//! events are maps with a `"type"` (vLLM ≥ 0.26) or positional arrays with the tag first (older),
//! decoded by name, unknown keys and unknown event types ignored. Hash values are u64 (values
//! ≥ 2^63 occur), or signed, or digest bytes (their last 8, big-endian) in engines that send them.

use prefix_index::{Change, Medium};
use rmpv::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub ts: f64,
    pub changes: Vec<Change>,
    pub rank: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("not msgpack: {0}")]
    Msgpack(String),
    #[error("not a KVEventBatch: {0}")]
    Shape(&'static str),
}

/// Decodes one batch's payload.
pub fn batch(payload: &[u8]) -> Result<Batch, DecodeError> {
    let mut rd = payload;
    let v = rmpv::decode::read_value_with_max_depth(&mut rd, 16).map_err(|e| DecodeError::Msgpack(e.to_string()))?;
    let Value::Array(items) = v else { return Err(DecodeError::Shape("the batch is not an array")) };
    let ts = match items.first() {
        Some(Value::F64(f)) => *f,
        Some(Value::F32(f)) => f64::from(*f),
        Some(Value::Integer(i)) => i.as_f64().unwrap_or(0.0),
        _ => return Err(DecodeError::Shape("the batch has no timestamp")),
    };
    let Some(Value::Array(events)) = items.get(1) else { return Err(DecodeError::Shape("the batch has no events")) };
    let rank = items.get(2).and_then(Value::as_i64);
    Ok(Batch { ts, changes: events.iter().filter_map(event).collect(), rank })
}

/// A hash value as the router keys it.
fn hash(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => i.as_u64().or_else(|| i.as_i64().map(|x| x as u64)),
        Value::Binary(b) if b.len() >= 8 => {
            let mut low = [0u8; 8];
            low.copy_from_slice(&b[b.len() - 8..]);
            Some(u64::from_be_bytes(low))
        }
        _ => None,
    }
}

fn hashes(v: Option<&Value>) -> Option<Vec<u64>> {
    match v? {
        Value::Array(a) => a.iter().map(hash).collect(),
        _ => None,
    }
}

fn tokens(v: Option<&Value>) -> Option<Vec<u32>> {
    match v? {
        Value::Array(a) => a.iter().map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok())).collect(),
        _ => None,
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

/// The salt among block 0's extra keys: a bare string that is not the LoRA name.
fn salt(extra_keys: Option<&Value>, lora: Option<&str>) -> Option<String> {
    let Some(Value::Array(blocks)) = extra_keys else { return None };
    let first = blocks.first()?;
    let values: Vec<&Value> = match first {
        Value::Array(vs) => vs.iter().collect(),
        Value::Nil => return None,
        other => vec![other],
    };
    values.iter().filter_map(|v| v.as_str()).find(|s| Some(*s) != lora).map(str::to_owned)
}

/// Field lookup on a map event, or by position on an array event (tag at 0).
struct Fields<'a> {
    map: Option<&'a [(Value, Value)]>,
    list: Option<&'a [Value]>,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str, position: usize) -> Option<&'a Value> {
        if let Some(m) = self.map {
            return m.iter().find(|(k, _)| k.as_str() == Some(name)).map(|(_, v)| v);
        }
        self.list.and_then(|l| l.get(position))
    }
}

fn event(v: &Value) -> Option<Change> {
    let (kind, f) = match v {
        Value::Map(m) => {
            let kind = m.iter().find(|(k, _)| k.as_str() == Some("type")).and_then(|(_, v)| v.as_str())?;
            (kind, Fields { map: Some(m), list: None })
        }
        Value::Array(a) => (a.first()?.as_str()?, Fields { map: None, list: Some(a) }),
        _ => return None,
    };
    match kind {
        "BlockStored" => {
            let block_hashes = hashes(f.get("block_hashes", 1))?;
            let parent = f.get("parent_block_hash", 2).and_then(hash);
            let token_ids = tokens(f.get("token_ids", 3))?;
            let block_size = usize::try_from(f.get("block_size", 4)?.as_u64()?).ok()?;
            let medium = Medium::parse(f.get("medium", 6).and_then(Value::as_str));
            let lora_name = text(f.get("lora_name", 7));
            let cache_salt = salt(f.get("extra_keys", 8), lora_name.as_deref());
            Some(Change::Stored { parent, block_hashes, token_ids, block_size, lora_name, cache_salt, medium })
        }
        "BlockRemoved" => {
            let block_hashes = hashes(f.get("block_hashes", 1))?;
            let medium = Medium::parse(f.get("medium", 2).and_then(Value::as_str));
            Some(Change::Removed { block_hashes, medium })
        }
        "AllBlocksCleared" => Some(Change::Cleared),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).expect("encodes");
        out
    }

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    #[test]
    fn map_events_as_vllm_0_33_sends_them() {
        let stored = Value::Map(vec![
            (s("type"), s("BlockStored")),
            (s("block_hashes"), Value::Array(vec![Value::from(u64::MAX - 1), Value::from(7u64)])),
            (s("parent_block_hash"), Value::Nil),
            (s("token_ids"), Value::Array((1..=8u64).map(Value::from).collect())),
            (s("block_size"), Value::from(4)),
            (s("lora_id"), Value::Nil),
            (s("medium"), s("GPU")),
            (s("lora_name"), Value::Nil),
            (s("extra_keys"), Value::Array(vec![Value::Array(vec![s("tenant-a")]), Value::Nil])),
            (s("something_new"), Value::from(1)),
        ]);
        let removed = Value::Map(vec![
            (s("type"), s("BlockRemoved")),
            (s("block_hashes"), Value::Array(vec![Value::from(7u64)])),
            (s("medium"), s("CPU")),
        ]);
        let cleared = Value::Map(vec![(s("type"), s("AllBlocksCleared"))]);
        let unknown = Value::Map(vec![(s("type"), s("SomethingElse"))]);
        let b =
            Value::Array(vec![Value::F64(1.5), Value::Array(vec![stored, removed, cleared, unknown]), Value::from(0)]);
        let got = batch(&encode(&b)).expect("decodes");
        assert_eq!(got.rank, Some(0));
        assert_eq!(
            got.changes,
            vec![
                Change::Stored {
                    parent: None,
                    block_hashes: vec![u64::MAX - 1, 7],
                    token_ids: (1..=8).collect(),
                    block_size: 4,
                    lora_name: None,
                    cache_salt: Some("tenant-a".into()),
                    medium: Medium::Gpu,
                },
                Change::Removed { block_hashes: vec![7], medium: Medium::Offloaded },
                Change::Cleared,
            ]
        );
    }

    #[test]
    fn positional_events_of_older_vllm_and_byte_hashes() {
        let digest: Vec<u8> = (0..32).collect();
        let stored = Value::Array(vec![
            s("BlockStored"),
            Value::Array(vec![Value::Binary(digest.clone())]),
            Value::from(-5i64),
            Value::Array((1..=4u64).map(Value::from).collect()),
            Value::from(4),
            Value::Nil,
        ]);
        let removed = Value::Array(vec![s("BlockRemoved"), Value::Array(vec![Value::from(3u64)])]);
        let b = Value::Array(vec![
            Value::F64(0.0),
            Value::Array(vec![stored, removed, Value::Array(vec![s("AllBlocksCleared")])]),
        ]);
        let got = batch(&encode(&b)).expect("decodes");
        let low = u64::from_be_bytes([24, 25, 26, 27, 28, 29, 30, 31]);
        assert_eq!(
            got.changes,
            vec![
                Change::Stored {
                    parent: Some(-5i64 as u64),
                    block_hashes: vec![low],
                    token_ids: vec![1, 2, 3, 4],
                    block_size: 4,
                    lora_name: None,
                    cache_salt: None,
                    medium: Medium::Gpu,
                },
                Change::Removed { block_hashes: vec![3], medium: Medium::Gpu },
                Change::Cleared,
            ]
        );
        assert_eq!(got.rank, None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(batch(b"").is_err());
        assert!(batch(&[0xc1]).is_err());
        assert!(batch(&encode(&Value::from(3))).is_err());
        // Deeply nested input is refused, not recursed into.
        let mut deep = vec![0x91u8; 10_000];
        deep.push(0xc0);
        assert!(batch(&deep).is_err());
    }
}
