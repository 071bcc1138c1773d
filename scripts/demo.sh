#!/usr/bin/env bash
# Quick-start demo: a local NetBox and a fake Proxmox VE cluster, then one real sync from
# the fake PVE into NetBox with the operator's `sync` command. Prints what it did and
# where to look.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/proxmox-netbox-operator/cargo-target}"
export PNBO_HARNESS_DIR="${PNBO_HARNESS_DIR:-/tmp/pnbo-harness}"

if ! command -v cargo >/dev/null; then
  echo "demo.sh: cargo is needed (the Rust toolchain of this machine)" >&2
  exit 1
fi
bash scripts/harness/harness.sh up
# shellcheck disable=SC1091
source "$PNBO_HARNESS_DIR/env"

echo "==> building proxmox-netbox-operator (release)"
cargo build --release --quiet
BIN="$CARGO_TARGET_DIR/release/proxmox-netbox-operator"

DEMO="$PNBO_HARNESS_DIR/demo"
SECRETS="$DEMO/secrets"
rm -rf "$DEMO"
mkdir -p "$SECRETS/pve-credentials" "$SECRETS/pve-ca" "$SECRETS/netbox-token"
chmod -R go-rwx "$DEMO"
printf '%s' "$PVE_TOKEN_ID" > "$SECRETS/pve-credentials/tokenId"
printf '%s' "$PVE_TOKEN_SECRET" > "$SECRETS/pve-credentials/tokenSecret"
cp "$PVE_CA_FILE" "$SECRETS/pve-ca/ca.crt"
printf '%s' "$NETBOX_TOKEN" > "$SECRETS/netbox-token/token"
cat > "$DEMO/cluster.yaml" <<YAML
apiVersion: proxmox-netbox.io/v1alpha1
kind: ProxmoxCluster
metadata:
  name: demo
  namespace: default
spec:
  proxmox:
    endpoints: ["$PVE_URL"]
    credentialsSecretRef: {name: pve-credentials}
    tls: {caSecretRef: {name: pve-ca, key: ca.crt}}
  netbox:
    url: $NETBOX_URL
    tokenSecretRef: {name: netbox-token, key: token}
    site: demo-site
  sync: {mode: Sync}
  hardwareDiscovery: {enabled: false}
YAML

echo "==> one-shot sync: $DEMO/cluster.yaml"
set +e
"$BIN" sync -f "$DEMO/cluster.yaml" --secrets-dir "$SECRETS"
rc=$?
set -e
echo
echo "==> a second sync with nothing changed (should write nothing)"
"$BIN" sync -f "$DEMO/cluster.yaml" --secrets-dir "$SECRETS" --output json \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); s=d["status"].get("sync") or {}; print("write requests:", s.get("writeRequests"), "| created:", s.get("created"), "updated:", s.get("updated"), "unchanged:", s.get("unchanged"))' || true
cat <<MSG

NetBox:   $NETBOX_URL   (login: $NETBOX_ADMIN_USER / $NETBOX_ADMIN_PASSWORD)
          Virtual machines: $NETBOX_URL/virtualization/virtual-machines/
          Devices:          $NETBOX_URL/dcim/devices/
Fake PVE: $PVE_URL (token $PVE_TOKEN_ID; CA $PVE_CA_FILE)
Resource: $DEMO/cluster.yaml   Secrets: $SECRETS
Stop everything with: scripts/harness/harness.sh down
MSG
exit $rc
