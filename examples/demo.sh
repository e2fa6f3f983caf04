#!/usr/bin/env bash
# The demo on the embedded default (no cluster): 3 vllm-sim pods, prefix-router, a real Envoy.
# Extra arguments go to the demo, e.g. --policy round-robin or --mode buffered.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY_BIN=$(bash .ci/envoy.sh)
export ENVOY_BIN
cargo build --locked --bins --example demo
exec target/debug/examples/demo "$@"
