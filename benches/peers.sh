#!/usr/bin/env bash
# The peers the routing benchmark compares against, pinned: vllm-router and sglang-router from PyPI
# (Rust routers with Python launchers), in their own venv. Prints the venv's bin directory.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-peers
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv" >&2; fi
if ! "$venv/bin/python" -c "import vllm_router, sglang_router" 2>/dev/null; then
  echo "installing vllm-router 0.1.17 and sglang-router 0.3.2 into $venv ..." >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "vllm-router==0.1.17" "sglang-router==0.3.2" >&2
fi
echo "$(pwd)/$venv/bin"
