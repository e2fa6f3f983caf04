//! Any bytes as an OpenAI request body, on each endpoint: parsed or refused, never a panic; a
//! parsed request always names a model.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prefix_router::openai::{parse, Endpoint};

fuzz_target!(|data: &[u8]| {
    for endpoint in [Endpoint::Completions, Endpoint::ChatCompletions, Endpoint::Other] {
        if let Ok(req) = parse(endpoint, data) {
            assert!(!req.model.is_empty() || endpoint == Endpoint::Other);
        }
    }
});
