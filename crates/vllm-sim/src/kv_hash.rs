//! vLLM's `sha256_cbor` block hash (`--prefix-caching-hash-algo sha256_cbor`): SHA-256 of the
//! canonical CBOR of `(parent_digest, tuple(block_token_ids), extra_keys or None)`, chained from
//! `NONE_HASH = SHA-256(CBOR "vllm-none-hash")`. A block's id in KV events is the digest's low 64
//! bits (its last 8 bytes, big-endian). The sim names its cache blocks this way so that what it
//! publishes is what vLLM would.

use sha2::{Digest, Sha256};

pub(crate) type Digest32 = [u8; 32];

/// One extra key of a block, tagged as vLLM tags it for hashing (`("cache_salt", "tenant-a")`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Extra {
    pub tag: &'static str,
    pub value: String,
}

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// `NONE_HASH`: the parent of a sequence's first block.
pub(crate) fn none_hash() -> Digest32 {
    let mut cbor = Vec::new();
    text(&mut cbor, "vllm-none-hash");
    Sha256::digest(&cbor).into()
}

/// The digest of one full block.
pub(crate) fn block_digest(parent: &Digest32, tokens: &[u32], extras: &[Extra]) -> Digest32 {
    let mut cbor = Vec::with_capacity(40 + tokens.len() * 5);
    cbor.push(0x83);
    cbor.extend_from_slice(&[0x58, 0x20]);
    cbor.extend_from_slice(parent);
    head(&mut cbor, 4, tokens.len() as u64);
    for t in tokens {
        head(&mut cbor, 0, u64::from(*t));
    }
    if extras.is_empty() {
        cbor.push(0xf6);
    } else {
        head(&mut cbor, 4, extras.len() as u64);
        for e in extras {
            cbor.push(0x82);
            text(&mut cbor, e.tag);
            text(&mut cbor, &e.value);
        }
    }
    Sha256::digest(&cbor).into()
}

/// The block's id in events: the digest's last 8 bytes, big-endian.
pub(crate) fn event_value(d: &Digest32) -> u64 {
    let mut low = [0u8; 8];
    low.copy_from_slice(&d[24..]);
    u64::from_be_bytes(low)
}

/// What a request's blocks carry besides their tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BlockKeys {
    pub lora: Option<String>,
    pub cache_salt: Option<String>,
}

impl BlockKeys {
    /// Block `i`'s extra keys for hashing: the LoRA adapter on every block, the salt on block 0.
    pub(crate) fn extras(&self, i: usize) -> Vec<Extra> {
        let mut out = Vec::new();
        if let Some(l) = &self.lora {
            out.push(Extra { tag: "lora_name", value: l.clone() });
        }
        if i == 0 {
            if let Some(s) = &self.cache_salt {
                out.push(Extra { tag: "cache_salt", value: s.clone() });
            }
        }
        out
    }
}

/// Event ids of the full blocks of `tokens`.
pub(crate) fn block_hashes(tokens: &[u32], block_size: usize, keys: &BlockKeys) -> Vec<u64> {
    let mut parent = none_hash();
    tokens
        .chunks_exact(block_size.max(1))
        .enumerate()
        .map(|(i, block)| {
            parent = block_digest(&parent, block, &keys.extras(i));
            event_value(&parent)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: &Digest32) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn design_test_vectors_come_out() {
        assert_eq!(hex(&none_hash()), "9bd96a485ad84efdafb72ee48a1d7a69bcead0f8f0433173941b276b9581eef0");
        let first: Vec<u32> = (1..=16).collect();
        let d1 = block_digest(&none_hash(), &first, &[]);
        assert_eq!(event_value(&d1), 8_866_452_693_264_111_234);
        let second: Vec<u32> = (17..=32).collect();
        assert_eq!(event_value(&block_digest(&d1, &second, &[])), 807_986_237_951_177_663);
        let salted = [Extra { tag: "cache_salt", value: "tenant-a".into() }];
        assert_eq!(event_value(&block_digest(&none_hash(), &first, &salted)), 5_068_484_237_151_326_159);
        let wide = [151_644, 872, 198, 100_000, 70_000, 65_535, 65_536, 255, 256, 23, 24, 0, 1, 2, 3, 4];
        assert_eq!(event_value(&block_digest(&none_hash(), &wide, &[])), 16_855_234_516_600_787_077);
        // The chained helper agrees with the step-by-step digests.
        let both: Vec<u32> = (1..=32).collect();
        assert_eq!(
            block_hashes(&both, 16, &BlockKeys::default()),
            vec![8_866_452_693_264_111_234, 807_986_237_951_177_663]
        );
        let keys = BlockKeys { lora: None, cache_salt: Some("tenant-a".into()) };
        assert_eq!(block_hashes(&first, 16, &keys), vec![5_068_484_237_151_326_159]);
    }
}
