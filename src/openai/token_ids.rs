//! The fast path for the one large thing a completion body carries: `prompt` as a JSON array of
//! token ids. The object's top level is walked (other values skipped, not decoded) to find
//! `"prompt"`; when its value is an array of plain non-negative integers that fit `u32`, the ids
//! are read eight bytes at a time (up to seven digits at once), and the rest of the body goes to
//! the ordinary parse with that array replaced by `null`. Anything else — another shape, a number
//! serde would refuse or read differently, a body this walk does not follow — gives `None`, and
//! the ordinary parse of the whole body decides, with its own error messages.
//!
//! Why the split is sound: the bytes before the array are the same in both bodies, so the
//! ordinary parse sees (and checks) exactly what this walk saw up to the array, and everything
//! after it; the array itself is checked here, strictly.

/// A body with its `prompt` token-id array taken out.
pub(super) struct Split {
    pub ids: Vec<u32>,
    /// The body with the array replaced by `null`.
    pub rest: Vec<u8>,
}

pub(super) fn split(body: &[u8]) -> Option<Split> {
    let mut i = ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = ws(body, i);
        if body.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(body, i)?;
        let key = &body[i + 1..key_end - 1];
        i = ws(body, key_end);
        if body.get(i) != Some(&b':') {
            return None;
        }
        i = ws(body, i + 1);
        if key == b"prompt" {
            let (ids, end) = id_array(body, i)?;
            let mut rest = Vec::with_capacity(body.len() - (end - i) + 4);
            rest.extend_from_slice(&body[..i]);
            rest.extend_from_slice(b"null");
            rest.extend_from_slice(&body[end..]);
            return Some(Split { ids, rest });
        }
        i = ws(body, skip_value(body, i)?);
        if body.get(i) != Some(&b',') {
            return None;
        }
        i += 1;
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn ws(body: &[u8], mut i: usize) -> usize {
    while body.get(i).is_some_and(|&b| is_ws(b)) {
        i += 1;
    }
    i
}

/// `body[start]` is `"`: the index just past the closing quote.
fn string_end(body: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', body.get(i..)?)?;
        if body[i] == b'"' {
            return Some(i + 1);
        }
        i += 2;
    }
}

/// The index just past the value starting at `start` (not validated: the ordinary parse does).
fn skip_value(body: &[u8], start: usize) -> Option<usize> {
    match *body.get(start)? {
        b'"' => string_end(body, start),
        b'[' | b'{' => {
            let mut depth = 0usize;
            let mut i = start;
            loop {
                match *body.get(i)? {
                    b'"' => {
                        i = string_end(body, i)?;
                        continue;
                    }
                    b'[' | b'{' => depth += 1,
                    b']' | b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let len = body[start..].iter().position(|&b| matches!(b, b',' | b'}' | b']') || is_ws(b));
            match len {
                Some(0) => None,
                Some(n) => Some(start + n),
                None => Some(body.len()),
            }
        }
    }
}

/// `[` at `start`, then one or more ids: the ids and the index just past `]`.
fn id_array(body: &[u8], start: usize) -> Option<(Vec<u32>, usize)> {
    if body.get(start) != Some(&b'[') {
        return None;
    }
    let mut i = ws(body, start + 1);
    // ≈ 6 bytes an id in typical bodies; growth covers the rest.
    let mut ids = Vec::with_capacity((body.len() - start) / 6 + 1);
    loop {
        let (id, digits) = number(body, i)?;
        ids.push(id);
        i += digits;
        if body.get(i) == Some(&b',') {
            i += 1;
            if body.get(i).is_some_and(|&b| is_ws(b)) {
                i = ws(body, i);
            }
            continue;
        }
        i = ws(body, i);
        match *body.get(i)? {
            b',' => i = ws(body, i + 1),
            b']' => return Some((ids, i + 1)),
            _ => return None,
        }
    }
}

/// A JSON integer at `i` that fits `u32`, and its length; `None` for anything serde must judge
/// (a sign, a leading zero, a fraction or exponent, more than `u32`, not a number).
///
/// Up to seven digits are read at once: the eight bytes at `i` are classified together, the
/// digits' length is the first non-digit's place, and the digits become a number by three
/// multiplications instead of one per digit.
#[inline]
fn number(body: &[u8], i: usize) -> Option<(u32, usize)> {
    if let Some(chunk) = body.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let digits = word ^ 0x3030_3030_3030_3030;
        // Exact per byte (no carry crosses a byte): the high bit marks a value above 9, a
        // non-digit.
        let marks = (((digits & 0x7f7f_7f7f_7f7f_7f7f) + 0x7676_7676_7676_7676) | digits) & 0x8080_8080_8080_8080;
        let len = (marks.trailing_zeros() / 8) as usize;
        if (1..8).contains(&len) {
            let next = (word >> (8 * len)) as u8;
            let leading_zero = len > 1 && word as u8 == b'0';
            if leading_zero || matches!(next, b'.' | b'e' | b'E') {
                return None;
            }
            // Seven digits at most: within u32.
            return Some((eight_digits(digits << (8 * (8 - len))) as u32, len));
        }
    }
    let len = body.get(i..)?.iter().take(11).take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 10 || (len > 1 && body[i] == b'0') || matches!(body.get(i + len), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    let value = body[i..i + len].iter().fold(0u64, |v, &d| v * 10 + u64::from(d - b'0'));
    Some((u32::try_from(value).ok()?, len))
}

/// Eight digit values (0–9), the first in the lowest byte, as one number.
fn eight_digits(d: u64) -> u64 {
    let pairs = d.wrapping_mul(10).wrapping_add(d >> 8);
    let lo = (pairs & 0x0000_00ff_0000_00ff).wrapping_mul(100 + (1_000_000 << 32));
    let hi = ((pairs >> 16) & 0x0000_00ff_0000_00ff).wrapping_mul(1 + (10_000 << 32));
    lo.wrapping_add(hi) >> 32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(body: &str) -> Option<Vec<u32>> {
        split(body.as_bytes()).map(|s| s.ids)
    }

    #[test]
    fn numbers_of_every_length_read_exactly() {
        for v in [0u32, 7, 10, 99, 123, 4_567, 89_012, 345_678, 9_012_345, 12_345_678, 123_456_789, u32::MAX] {
            assert_eq!(ids(&format!(r#"{{"prompt":[{v},{v}]}}"#)), Some(vec![v, v]), "{v}");
            assert_eq!(ids(&format!(r#"{{"prompt":[{v}]}}"#)), Some(vec![v]), "{v} at the end");
        }
    }

    #[test]
    fn ids_of_every_length_read_alike_after_a_first_id_of_every_length() {
        let lengths: Vec<u32> =
            (0..60u32).map(|k| [1, 22, 333, 4_444, 55_555, 666_666, 7_777_777, 0, 10][k as usize % 9]).collect();
        let long = [12_345_678, 123_456_789, u32::MAX];
        // Every length after every other, both separator styles; the last ids end within eight
        // bytes of the body's end, where the reader takes one digit at a time.
        for first in [0, 12, 345, 6_789, 10_000, 200_000, 3_000_000, 40_000_000, 500_000_000, 4_000_000_000] {
            for sep in [",", ", "] {
                for tail in [&lengths[..], &long[..]] {
                    let want: Vec<u32> = std::iter::once(first).chain(tail.iter().copied()).collect();
                    let list = want.iter().map(u32::to_string).collect::<Vec<_>>().join(sep);
                    let body = format!(r#"{{"prompt":[{list}]}}"#);
                    assert_eq!(ids(&body), Some(want), "{body}");
                }
            }
        }
    }

    #[test]
    fn every_separator_style_reads_the_same_ids() {
        let want: Vec<u32> = (0..40u32).map(|i| i.pow(3) * 7 % 2_000_000).collect();
        for sep in [",", ", ", ",  ", " , ", ",\n\t", "\n,"] {
            let list = want.iter().map(u32::to_string).collect::<Vec<_>>().join(sep);
            assert_eq!(ids(&format!(r#"{{"prompt":[{list}],"max_tokens":4}}"#)), Some(want.clone()), "{sep:?}");
        }
    }

    #[test]
    fn the_array_is_cut_out_and_the_rest_kept() {
        let s = split(br#" { "model" : "m", "x": {"prompt": [9]}, "prompt" : [ 1 , 2,3 ] , "n": 1 }"#).expect("split");
        assert_eq!(s.ids, [1, 2, 3]);
        assert_eq!(s.rest, br#" { "model" : "m", "x": {"prompt": [9]}, "prompt" : null , "n": 1 }"#);
    }

    #[test]
    fn anything_serde_must_judge_is_left_to_it() {
        for body in [
            r#"{"prompt":[]}"#,
            r#"{"prompt":[-1]}"#,
            r#"{"prompt":[01]}"#,
            r#"{"prompt":[1.0]}"#,
            r#"{"prompt":[1e3]}"#,
            r#"{"prompt":[4294967296]}"#,
            r#"{"prompt":[1,]}"#,
            r#"{"prompt":[1 2]}"#,
            r#"{"prompt":[1,"a"]}"#,
            r#"{"prompt":[[1]]}"#,
            r#"{"prompt":"text"}"#,
            r#"{"prompt":[1"#,
            r#"{"prompt":[1,"a]",2]}"#,
            r#"{"prompt":[1,-2]}"#,
            r#"{"prompt":[1,+2]}"#,
            r#"{"prompt":[1,2 ,3 4]}"#,
            r#"{"prompt":[1,1234567x]}"#,
            r#"{"prompt":[1,12345678901]}"#,
            r#"{"prompt":[1,,2]}"#,
            r#"{"prompt":[1, ,2]}"#,
            r#"{"prompt":[1,2,]}"#,
            r#"{"prompt":[ ,1]}"#,
            r#"{"prompt":[12,0123]}"#,
            r#"{"prompt":[12,1.5,3]}"#,
            r#"{"a":"\"prompt\":[1]"}"#,
            r#"{"model":"m"}"#,
            r#"["prompt",[1]]"#,
        ] {
            assert!(ids(body).is_none(), "{body}");
        }
    }
}
