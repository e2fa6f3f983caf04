#!/usr/bin/env bash
# Runs every fuzz target for a bounded time each (not in CI). Needs nightly and cargo-fuzz
# (`cargo install cargo-fuzz`). Usage: bash fuzz/run.sh [seconds per target, default 600]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
for target in body_parser extproc_stream endpoints_file kv_event_batch; do
  echo "== $target (${secs}s)"
  cargo +nightly fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=4096 2>&1 | tail -n 3
done
