#!/usr/bin/env bash
# Installs Weft with `kubectl apply -k`, leaving a real Istio's CRDs alone: when the cluster has any
# *.istio.io CRD that is not Weft's (no label app.kubernetes.io/part-of=weft), it applies
# deploy/overlays/istio-present (no CRDs); otherwise deploy/ (with the CRDs).
# Extra arguments go to `kubectl apply` (e.g. --dry-run=server, --context …).
set -euo pipefail
dir="$(cd "$(dirname "$0")" && pwd)"
foreign="$(kubectl get crd -l 'app.kubernetes.io/part-of!=weft' -o name | grep -E '\.istio\.io$' || true)"
if [ -n "$foreign" ]; then
  echo "weft: found Istio CRDs not installed by Weft; keeping them (deploy/overlays/istio-present):" >&2
  echo "$foreign" | sed 's/^/  /' >&2
  exec kubectl apply "$@" -k "$dir/overlays/istio-present"
fi
exec kubectl apply "$@" -k "$dir"
