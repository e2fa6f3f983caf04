//! The completion body's fast path for token ids (`openai::parse`) against the ordinary parse
//! (`openai::parse_ordinary`): for any body — well formed or not, ids in any spelling, other
//! fields around them, bytes cut or inserted — both give the same request or the same error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use prefix_router::openai::{parse, parse_ordinary, Endpoint};
use proptest::prelude::*;

/// An id as a client may spell it, including spellings serde refuses or reads otherwise.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (0u32..200_000).prop_map(|v| v.to_string()),
        1 => any::<u32>().prop_map(|v| v.to_string()),
        1 => prop_oneof![
            Just("-1".to_owned()),
            Just("01".to_owned()),
            Just("00".to_owned()),
            Just("1.0".to_owned()),
            Just("1e3".to_owned()),
            Just("4294967296".to_owned()),
            Just("99999999999".to_owned()),
            Just("\"7\"".to_owned()),
            Just("[1]".to_owned()),
            Just("null".to_owned()),
            Just("".to_owned()),
        ],
    ]
}

fn sep() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(","), Just(", "), Just(" ,"), Just(",\n  "), Just("\t,\r\n")]
}

fn other_field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#""max_tokens": 16"#.to_owned()),
        Just(r#""stream": true"#.to_owned()),
        Just(r#""stream": "yes""#.to_owned()),
        Just(r#""cache_salt": "s\"alt""#.to_owned()),
        Just(r#""x": "\\\"prompt\": [1]""#.to_owned()),
        Just(r#""nested": {"prompt": [1, 2], "a": ["]", "}"]}"#.to_owned()),
        Just(r#""prompt": [5]"#.to_owned()),
        Just(r#""model": 7"#.to_owned()),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((id(), sep()), 0..40),
        prop::collection::vec(other_field(), 0..3),
        prop::collection::vec(other_field(), 0..3),
        any::<bool>(),
        prop::option::of((any::<prop::sample::Index>(), prop_oneof![Just(None), any::<u8>().prop_map(Some)])),
    )
        .prop_map(|(ids, before, after, model, edit)| {
            let array: String = ids
                .iter()
                .enumerate()
                .map(|(k, (id, s))| if k == 0 { id.clone() } else { format!("{s}{id}") })
                .collect();
            let mut fields: Vec<String> = before;
            if model {
                fields.insert(0, r#""model": "m""#.to_owned());
            }
            fields.push(format!(r#""prompt" : [ {array} ]"#));
            fields.extend(after);
            let mut bytes = format!("{{{}}}", fields.join(", ")).into_bytes();
            // One byte cut, or one byte written over, anywhere.
            if let Some((at, byte)) = edit {
                let at = at.index(bytes.len());
                match byte {
                    None => drop(bytes.remove(at)),
                    Some(b) => bytes[at] = b,
                }
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn the_fast_path_answers_as_the_ordinary_parse(body in body()) {
        prop_assert_eq!(parse(Endpoint::Completions, &body), parse_ordinary(Endpoint::Completions, &body));
    }
}

#[test]
fn long_prompts_of_ids_read_the_same_both_ways() {
    let ids: Vec<u32> = (0..40_000u32).map(|i| i.wrapping_mul(2_654_435_761) % 151_000).collect();
    for body in [
        serde_json::json!({"model": "m", "prompt": ids}).to_string(),
        format!(r#"{{"model": "m", "prompt": {ids:?}}}"#),
    ] {
        let fast = parse(Endpoint::Completions, body.as_bytes()).expect("parses");
        assert_eq!(fast, parse_ordinary(Endpoint::Completions, body.as_bytes()).expect("parses"));
    }
}
