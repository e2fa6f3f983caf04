//! Any bytes as an OpenAI request body, on each endpoint: parsed or refused, never a panic; a
//! parsed request always names a model; and the token-id fast path answers exactly as the
//! ordinary parse does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prefix_router::openai::{parse, parse_ordinary, Endpoint};

fuzz_target!(|data: &[u8]| {
    for endpoint in [Endpoint::Completions, Endpoint::ChatCompletions, Endpoint::Other] {
        let got = parse(endpoint, data);
        assert_eq!(got, parse_ordinary(endpoint, data));
        if let Ok(req) = got {
            assert!(!req.model.is_empty() || endpoint == Endpoint::Other);
        }
    }
});
