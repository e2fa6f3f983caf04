#!/usr/bin/env bash
# Renders every kustomization under deploy/ with `kubectl kustomize` and validates the rendered
# objects offline: core kinds against Kubernetes 1.33 schemas (kubernetes-validate --strict), custom
# resources (Gateway API, Envoy Gateway, Prometheus Operator, GIE) against the real CRDs in
# ../shared/crds (their OpenAPI schemas, unknown fields an error: .ci/validate_crs.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v kubectl >/dev/null; then
  echo "kubectl is missing: the manifest check needs kubectl >= 1.27 (kustomize v5). This machine image normally" >&2
  echo "ships kubectl v1.32; Debian's kubernetes-client package is too old to rely on." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -c "import kubernetes_validate" 2>/dev/null \
  || .venv/bin/pip install --quiet --disable-pip-version-check kubernetes-validate
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for dir in $(find deploy -name kustomization.yaml -printf '%h\n' | sort); do
  name=$(echo "$dir" | tr '/' '_')
  if ! kubectl kustomize "$dir" > "$out/$name.yaml" 2> "$out/$name.err"; then
    echo "FAIL render $dir: $(cat "$out/$name.err")"; status=1; continue
  fi
  # Components render only inside a kustomization; validate them through the overlays that use them.
  grep -q "^kind: Component" "$dir/kustomization.yaml" && { echo "ok   $dir (component)"; continue; }
  report=$(.venv/bin/kubernetes-validate --strict -k 1.33.0 "$out/$name.yaml" 2>&1) || { echo "FAIL validate $dir"; echo "$report"; status=1; continue; }
  passed=$(echo "$report" | grep -c "passed for resource" || true)
  crs=$(.venv/bin/python .ci/validate_crs.py ../shared/crds "$out/$name.yaml") || { echo "FAIL validate $dir"; echo "$crs" | grep FAIL; status=1; continue; }
  ncrs=$(echo "$crs" | grep -c "^ok" || true)
  echo "ok   $dir: $passed core objects valid, $ncrs custom resources valid against their CRDs"
done
exit $status
