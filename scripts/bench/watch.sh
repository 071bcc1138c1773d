#!/usr/bin/env bash
# Near-real-time sync benchmark (docs/benchmarks.md, "Changes reach NetBox in seconds"):
# the operator (`run`, release build) on the harness's kube-apiserver and NetBox, polling a
# fakepve of GUESTS guests on 3 nodes every WATCH; after its first full sync,
#   1. an idle window: PVE and NetBox requests per poll, from the operator's metrics;
#   2. COUNT changes at random times over DURATION seconds (changes.py: create, destroy,
#      migrate, memory, start/stop), each timed until NetBox shows it (watch_latency.py),
#      then NetBox compared with PVE;
#   3. a full sync forced by the resync annotation: what it still writes.
#
#   bash scripts/bench/watch.sh [GUESTS=3000] [COUNT=100] [DURATION=600]   (WATCH=15s by default)
#
# Needs the harness (scripts/harness/harness.sh up, done here). Nothing else may compile or
# run on the machine meanwhile: the figures are wall-clock times.
set -euo pipefail
GUESTS="${1:-3000}"
COUNT="${2:-100}"
DURATION="${3:-600}"
WATCH="${WATCH:-15s}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/proxmox-netbox-operator/cargo-target}"
export PNBO_HARNESS_DIR="${PNBO_HARNESS_DIR:-/tmp/pnbo-harness}"
bash scripts/harness/harness.sh up >/dev/null
source "$PNBO_HARNESS_DIR/env"
cargo build --release --quiet
BIN="$CARGO_TARGET_DIR/release/proxmox-netbox-operator"
KUBECTL="$(bash scripts/tools.sh | cut -d: -f1)/kubectl"
export KUBECONFIG="$PNBO_KUBECONFIG"
RUN="watch-$GUESTS-$(date +%s)"
WORK="$(mktemp -d)"
OUT="${OUT:-$WORK}"
mkdir -p "$OUT"
cleanup() {
  kill "$(cat "$WORK/operator.pid" 2>/dev/null)" "$(cat "$WORK/pve/pid" 2>/dev/null)" 2>/dev/null || true
  "$KUBECTL" delete namespace "$RUN" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

# The operator's read privileges and what changes.py needs.
PRIVILEGES=Sys.Audit,VM.Audit,Datastore.Audit,VM.GuestAgent.Audit,VM.Monitor,VM.Allocate,VM.Config.Memory,VM.Config.CPU,VM.Config.Network,VM.Config.Options,VM.Config.Disk,Datastore.AllocateSpace,VM.PowerMgmt,VM.Migrate
mkdir -p "$WORK/pve"
"$FAKEPVE_PYTHON" "$FAKEPVE_LAUNCHER" --generate "nodes=3,guests=$GUESTS,seed=5" --state-dir "$WORK/pve" \
  --privileges "$PRIVILEGES" >"$WORK/pve/log" 2>&1 &
echo $! > "$WORK/pve/pid"
for _ in $(seq 600); do [ -f "$WORK/pve/env.json" ] && break; sleep 0.1; done
[ -f "$WORK/pve/env.json" ] || { cat "$WORK/pve/log" >&2; exit 1; }
pve() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$WORK/pve/env.json" "$1"; }

"$KUBECTL" apply --server-side --force-conflicts -f deploy/crds.yaml >/dev/null
"$KUBECTL" create namespace "$RUN" >/dev/null
"$KUBECTL" -n "$RUN" create secret generic pve --from-literal=tokenId="$(pve PVE_TOKEN_ID)" \
  --from-literal=tokenSecret="$(pve PVE_TOKEN_SECRET)" >/dev/null
"$KUBECTL" -n "$RUN" create secret generic pve-ca --from-file=ca.crt="$(pve PVE_CA_FILE)" >/dev/null
printf '%s' "$NETBOX_TOKEN" > "$WORK/netbox-token"
"$KUBECTL" -n "$RUN" create secret generic netbox --from-file=token="$WORK/netbox-token" >/dev/null
"$KUBECTL" -n "$RUN" label secret pve pve-ca netbox proxmox-netbox.io/credentials=true >/dev/null
"$KUBECTL" -n "$RUN" apply -f - >/dev/null <<YAML
apiVersion: proxmox-netbox.io/v1alpha1
kind: ProxmoxCluster
metadata: {name: bench}
spec:
  proxmox: {endpoints: ["$(pve PVE_URL)"], credentialsSecretRef: {name: pve}, tls: {caSecretRef: {name: pve-ca, key: ca.crt}}, maxConcurrency: 16}
  netbox: {url: "$NETBOX_URL", allowInsecureHttp: true, tokenSecretRef: {name: netbox, key: token}, site: $RUN, clusterName: $RUN}
  sync: {interval: 6h, watchInterval: $WATCH, prune: {enabled: true, gracePeriod: 0s}}
YAML

METRICS="127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
PNO_LOG_FORMAT=json RUST_LOG=info "$BIN" run --namespace "$RUN" --metrics-addr "$METRICS" \
  --allow-endpoint-cidr 127.0.0.0/8 >"$WORK/operator.log" 2>&1 &
echo $! > "$WORK/operator.pid"

status() { "$KUBECTL" -n "$RUN" get proxmoxcluster bench -o json; }
wait_status() { # $1 = python condition on `s` (the status), $2 = what, $3 = seconds
  local deadline=$((SECONDS + $3))
  until status | python3 -c "import json,sys; s = json.load(sys.stdin).get('status') or {}; sys.exit(0 if ($1) else 1)"; do
    [ $SECONDS -lt $deadline ] || { echo "not $2 within $3 s" >&2; status >&2; tail -20 "$WORK/operator.log" >&2; exit 1; }
    sleep 2
  done
}
metric_sum() { # $1 = metric line prefix: the sum of its values
  curl -s "http://$METRICS/metrics" | awk -v p="$1" 'index($0, p) == 1 { s += $NF } END { printf "%d\n", s }'
}

started=$SECONDS
wait_status "any(c['type'] == 'Ready' and c['status'] == 'True' for c in s.get('conditions', []))" Ready 3600
echo "first full sync of $GUESTS guests: $((SECONDS - started)) s" | tee "$OUT/watch-summary.txt"

# 1. Idle: nothing changes for 60 s.
p0=$(metric_sum 'proxmox_netbox_watch_polls_total{'); r0=$(metric_sum 'proxmox_netbox_pve_request_duration_seconds_count{')
n0=$(metric_sum 'proxmox_netbox_netbox_request_duration_seconds_count{'); v0=$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["resourceVersion"])')
sleep 60
p1=$(metric_sum 'proxmox_netbox_watch_polls_total{'); r1=$(metric_sum 'proxmox_netbox_pve_request_duration_seconds_count{')
n1=$(metric_sum 'proxmox_netbox_netbox_request_duration_seconds_count{'); v1=$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["resourceVersion"])')
echo "idle 60 s: $((p1 - p0)) polls, $((r1 - r0)) PVE requests, $((n1 - n0)) NetBox requests, status written: $([ "$v0" = "$v1" ] && echo no || echo yes)" | tee -a "$OUT/watch-summary.txt"

# 2. Changes, timed until NetBox shows them.
c0=$(metric_sum 'proxmox_netbox_watch_change_sync_duration_seconds_count{'); s0=$(metric_sum 'proxmox_netbox_watch_change_sync_duration_seconds_sum{')
python3 scripts/bench/changes.py --env "$WORK/pve/env.json" --count "$COUNT" --duration "$DURATION" --seed 1 \
  --settle 40 --progress "$WORK/changes.jsonl" --out "$OUT/changes.json" 2>"$OUT/changes.log" &
changer=$!
python3 scripts/bench/watch_latency.py --netbox-url "$NETBOX_URL" --netbox-token-file "$WORK/netbox-token" \
  --cluster "$RUN" --pve-env "$WORK/pve/env.json" --progress "$WORK/changes.jsonl" --done "$OUT/changes.json" \
  --out "$OUT/latency.json" 2>"$OUT/latency.log" || latency_failed=1
wait "$changer"
tail -12 "$OUT/latency.log" | tee -a "$OUT/watch-summary.txt"
c1=$(metric_sum 'proxmox_netbox_watch_change_sync_duration_seconds_count{'); s1=$(metric_sum 'proxmox_netbox_watch_change_sync_duration_seconds_sum{')
echo "targeted passes: $((c1 - c0)), mean detection-to-written $(python3 -c "print(round(($s1 - $s0) / max(1, $c1 - $c0), 2))") s" | tee -a "$OUT/watch-summary.txt"

# 3. A full sync after the changes.
"$KUBECTL" -n "$RUN" annotate proxmoxcluster bench proxmox-netbox.io/resync=after-changes --overwrite >/dev/null
started=$SECONDS
wait_status "s.get('lastResyncRequest') == 'after-changes'" resynced 3600
status | python3 -c "import json,sys; s = json.load(sys.stdin)['status']['sync']; print('full sync after the changes: $((SECONDS - started)) s, created', s['created'], 'updated', s['updated'], 'deleted', s['deleted'], 'write requests', s['writeRequests'], 'read requests', s['readRequests'])" | tee -a "$OUT/watch-summary.txt"
cp "$WORK/operator.log" "$OUT/operator.log"
[ -z "${latency_failed:-}" ]
