#!/usr/bin/env bash
# Quick-start demo: the operator as a user runs it. Starts the local harness (a real
# NetBox, a fake Proxmox VE cluster, an OpenSSH server standing in for the nodes, and a
# real Kubernetes API server), installs the chart's CRDs and RBAC, creates Secrets, a
# ProxmoxCluster with hardware discovery and NodeSSHCredentials, then runs
# `proxmox-netbox-operator run` (as the chart's ServiceAccount) until the cluster is
# Ready, and prints what a user would look at. The operator keeps running afterwards;
# the last lines say how to stop it.
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
PATH="$(bash scripts/tools.sh):$PATH"
export KUBECONFIG="$PNBO_KUBECONFIG"

echo "==> building proxmox-netbox-operator (release)"
cargo build --release --quiet
BIN="$CARGO_TARGET_DIR/release/proxmox-netbox-operator"

DEMO="$PNBO_HARNESS_DIR/demo"
NS=demo
if [ -f "$DEMO/operator.pid" ]; then
  kill "$(cat "$DEMO/operator.pid")" 2>/dev/null || true
fi
rm -rf "$DEMO"
mkdir -p "$DEMO"
chmod 700 "$DEMO"

echo "==> CRDs and the chart's RBAC (watchNamespace=$NS), applied server-side"
"$BIN" crdgen | kubectl apply --server-side --field-manager=pno-demo -f - >/dev/null
kubectl wait --for=condition=Established --timeout=60s \
  crd/proxmoxclusters.proxmox-netbox.io crd/nodesshcredentials.proxmox-netbox.io >/dev/null
# A previous run's cluster keeps its finalizer once its operator is gone: drop it first.
for r in $(kubectl -n "$NS" get proxmoxclusters -o name 2>/dev/null); do
  kubectl -n "$NS" patch "$r" --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null
done
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=90s >/dev/null
kubectl create namespace "$NS" >/dev/null
helm template pno charts/proxmox-netbox-operator --namespace "$NS" \
  --set watchNamespace="$NS" --set leaderElection.enabled=true \
  | kubectl apply --server-side --field-manager=pno-demo -f - >/dev/null

echo "==> Secrets (marked for the operator), a ProxmoxCluster and NodeSSHCredentials"
kubectl -n "$NS" create secret generic pve-credentials \
  --from-literal=tokenId="$PVE_TOKEN_ID" --from-literal=tokenSecret="$PVE_TOKEN_SECRET" >/dev/null
kubectl -n "$NS" create secret generic pve-ca --from-file=ca.crt="$PVE_CA_FILE" >/dev/null
kubectl -n "$NS" create secret generic netbox-token --from-literal=token="$NETBOX_TOKEN" >/dev/null
kubectl -n "$NS" create secret generic node-ssh --from-file=id_ed25519="$SSH_KEY_FILE" >/dev/null
kubectl -n "$NS" label secret pve-credentials pve-ca netbox-token node-ssh \
  proxmox-netbox.io/credentials=true >/dev/null
cat > "$DEMO/cluster.yaml" <<YAML
apiVersion: proxmox-netbox.io/v1alpha1
kind: ProxmoxCluster
metadata:
  name: demo
  namespace: $NS
spec:
  proxmox:
    endpoints: ["$PVE_URL"]
    credentialsSecretRef: {name: pve-credentials}
    tls: {caSecretRef: {name: pve-ca, key: ca.crt}}
  netbox:
    url: $NETBOX_URL
    allowInsecureHttp: true   # the demo NetBox is plain http on loopback
    tokenSecretRef: {name: netbox-token, key: token}
    site: demo-site
  sync: {mode: Sync, interval: 5m}
  hardwareDiscovery: {enabled: true}
YAML
# The harness's sshd stands in for pve1 and pve2; pve3 has no credential (a warning).
for node in pve1 pve2; do
  cat <<YAML
---
apiVersion: proxmox-netbox.io/v1alpha1
kind: NodeSSHCredential
metadata:
  name: $node
  namespace: $NS
spec:
  clusterRef: {name: demo}
  nodeName: $node
  address: 127.0.0.1
  port: $SSH_PORT
  username: $SSH_KEY_USER
  privateKeySecretRef: {name: node-ssh, key: id_ed25519}
  hostKeyFingerprint: "$SSH_HOST_FINGERPRINT"
YAML
done > "$DEMO/credentials.yaml"
kubectl apply -f "$DEMO/cluster.yaml" -f "$DEMO/credentials.yaml" >/dev/null

echo "==> the operator, as the chart's ServiceAccount (token from the TokenRequest API)"
TOKEN="$(kubectl -n "$NS" create token pno-proxmox-netbox-operator --duration=24h)"
SERVER="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' \
  | base64 -d > "$DEMO/ca.crt"
(umask 077; cat > "$DEMO/operator.kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters: [{name: harness, cluster: {server: "$SERVER", certificate-authority: "$DEMO/ca.crt"}}]
users: [{name: operator, user: {token: "$TOKEN"}}]
contexts: [{name: operator, context: {cluster: harness, user: operator, namespace: $NS}}]
current-context: operator
KCFG
)
# Everything of the demo (fake PVE, NetBox, sshd) is on loopback, which the endpoint guard
# refuses unless allowed.
KUBECONFIG="$DEMO/operator.kubeconfig" PNO_LOG_FORMAT=text nohup "$BIN" run \
  --namespace "$NS" --leader-election --lease-namespace "$NS" --identity demo \
  --allow-endpoint-cidr 127.0.0.0/8 \
  --metrics-addr 127.0.0.1:58080 > "$DEMO/operator.log" 2>&1 &
echo $! > "$DEMO/operator.pid"

echo "==> waiting for Ready"
if ! kubectl -n "$NS" wait proxmoxcluster/demo --for=condition=Ready --timeout=300s >/dev/null; then
  echo "demo.sh: the cluster did not become Ready; the operator's log:" >&2
  tail -30 "$DEMO/operator.log" >&2
  exit 1
fi

echo
echo "\$ kubectl -n $NS get proxmoxclusters"
kubectl -n "$NS" get proxmoxclusters
echo
echo "\$ kubectl -n $NS get nodesshcredentials"
kubectl -n "$NS" get nodesshcredentials
echo
echo "Per-node facts and warnings (status.nodes):"
kubectl -n "$NS" get proxmoxcluster demo -o json | python3 -c '
import json, sys
for n in json.load(sys.stdin)["status"].get("nodes", []):
    hw = n.get("hardware") or {}
    sysinfo = hw.get("system") or {}
    warn = n.get("warning")
    facts = ", ".join(x for x in [sysinfo.get("manufacturer"), sysinfo.get("productName"),
                                  ("serial " + sysinfo["serialNumber"]) if sysinfo.get("serialNumber") else None] if x)
    print("  %-6s %s" % (n["name"], ("warning %s: %s" % (warn["code"], warn["message"])) if warn else (facts or "discovered")))
'
echo
echo "Conditions:"
kubectl -n "$NS" get proxmoxcluster demo \
  -o jsonpath='{range .status.conditions[*]}  {.type}={.status} ({.reason}): {.message}{"\n"}{end}'
echo
echo "\$ kubectl -n $NS get events --field-selector involvedObject.name=demo"
kubectl -n "$NS" get events --field-selector involvedObject.name=demo --sort-by=.metadata.creationTimestamp | tail -8

cat <<MSG

NetBox:   $NETBOX_URL   (login: $NETBOX_ADMIN_USER / $NETBOX_ADMIN_PASSWORD)
          Virtual machines: $NETBOX_URL/virtualization/virtual-machines/?site=demo-site
          Devices:          $NETBOX_URL/dcim/devices/?site=demo-site
Metrics:  http://127.0.0.1:58080/metrics
kubectl:  export KUBECONFIG=$PNBO_KUBECONFIG   (the harness API server, admin)
Operator: running as PID $(cat "$DEMO/operator.pid"), log $DEMO/operator.log
Stop the operator:  kill \$(cat $DEMO/operator.pid)
Stop everything:    kill \$(cat $DEMO/operator.pid); scripts/harness/harness.sh down
MSG
