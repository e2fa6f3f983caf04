#!/usr/bin/env bash
# Regenerates BENCHMARKS.md and benches/routing/ttft.svg: every policy on every workload, one run.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY_BIN=$(bash .ci/envoy.sh)
export ENVOY_BIN
cargo build --locked --release -p vllm-sim --bins
cargo bench --locked --bench routing
