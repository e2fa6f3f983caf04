//! vLLM KV-cache events: what each pod really holds. `decode` reads the wire; `subscriber` keeps
//! one subscription per ready vLLM pod (following discovery), recovers from gaps and restarts by
//! replay, and feeds the routing side plain changes; each pod's trust state says whether routing
//! may use its events (`exact`) or must fall back to the routing-history index.

pub mod decode;
