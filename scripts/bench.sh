#!/usr/bin/env bash
# Benchmark of the NetBox sync against the harness's real NetBox (see docs/benchmarks.md).
#
#   scripts/bench.sh [GUESTS]     default 1000 guests on 3 nodes
#   scripts/bench.sh discovery    hardware discovery cost per node over loopback
#   scripts/bench.sh marks [GUESTS]  what each part of the first sync's writes costs: the
#                                 floor with each ownership mark and each primary MAC method
#
# Measures, in one run: (a) the floor: bare bulk creates of the guests' objects by the
# simplest client (scripts/bench/floor.py), and the same with the operator's ownership marks
# and the PATCH passes NetBox requires for primary MACs and IPs; (b) the first sync: wall
# time, requests, NetBox time per endpoint; (c) a no-op resync; (d) a resync after 1% of the
# guests changed; (e) the operator's peak RSS.
# The floors and the first sync each start from a clean NetBox database (the harness's
# template), so none of them writes into a NetBox the one before filled.
# Prints a Markdown table row set; appends nothing by itself.
set -euo pipefail
GUESTS="${1:-1000}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/proxmox-netbox-operator/cargo-target}"
export PNBO_HARNESS_DIR="${PNBO_HARNESS_DIR:-/tmp/pnbo-harness}"
command -v /usr/bin/time >/dev/null || { apt-get update -qq; apt-get install -y -qq time >/dev/null; }
bash scripts/harness/harness.sh up >/dev/null
# shellcheck disable=SC1091
source "$PNBO_HARNESS_DIR/env"
cargo build --release --quiet
BIN="$CARGO_TARGET_DIR/release/proxmox-netbox-operator"
WORK="$(mktemp -d)"
trap 'kill $(cat "$WORK"/pve*/pid 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
RUN="bench-$GUESTS-$(date +%s)"

fresh_netbox() { # a clean NetBox database (and a new token), as for a first sync
  bash scripts/harness/harness.sh up >/dev/null
  # shellcheck disable=SC1091
  source "$PNBO_HARNESS_DIR/env"
}

bootstrap_marks() { # the operator's tag and custom fields, which floor.py --same-objects
  # needs, made by one sync of the small demo topology
  mkdir -p "$WORK/demo"
  "$FAKEPVE_PYTHON" "$FAKEPVE_LAUNCHER" --topology tests/topologies/demo.json --state-dir "$WORK/demo" >"$WORK/demo/log" 2>&1 &
  echo $! > "$WORK/demo/pid"
  for _ in $(seq 600); do [ -f "$WORK/demo/env.json" ] && break; sleep 0.1; done
  write_cluster "$WORK/demo"
  sync_once >/dev/null 2>&1
}

start_pve() { # $1 = state dir, rest = extra launcher args
  local dir="$1"; shift
  mkdir -p "$dir"
  "$FAKEPVE_PYTHON" "$FAKEPVE_LAUNCHER" --generate "nodes=3,guests=$GUESTS,seed=5" --state-dir "$dir" "$@" >"$dir/log" 2>&1 &
  echo $! > "$dir/pid"
  for _ in $(seq 600); do [ -f "$dir/env.json" ] && return 0; sleep 0.1; done
  cat "$dir/log" >&2; exit 1
}

write_cluster() { # $1 = fakepve state dir
  local url; url="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["PVE_URL"])' "$1/env.json")"
  mkdir -p "$WORK/secrets/pve" "$WORK/secrets/pve-ca" "$WORK/secrets/nb"
  python3 - "$1/env.json" "$WORK/secrets" <<'PY'
import json, sys
e = json.load(open(sys.argv[1])); d = sys.argv[2]
open(d + '/pve/tokenId', 'w').write(e['PVE_TOKEN_ID'])
open(d + '/pve/tokenSecret', 'w').write(e['PVE_TOKEN_SECRET'])
open(d + '/pve-ca/ca.crt', 'w').write(open(e['PVE_CA_FILE']).read())
PY
  printf '%s' "$NETBOX_TOKEN" > "$WORK/secrets/nb/token"
  cat > "$WORK/cluster.yaml" <<YAML
apiVersion: proxmox-netbox.io/v1alpha1
kind: ProxmoxCluster
metadata: {name: $RUN, namespace: bench}
spec:
  proxmox: {endpoints: ["$url"], credentialsSecretRef: {name: pve}, tls: {caSecretRef: {name: pve-ca, key: ca.crt}}, maxConcurrency: 16}
  netbox: {url: "$NETBOX_URL", allowInsecureHttp: true, tokenSecretRef: {name: nb, key: token}, site: $RUN, clusterName: $RUN}
YAML
}

requests_by_endpoint() { # NetBox time per method and endpoint in the last sync, from its debug log
  python3 - "$WORK/requests.log" <<'PY'
import collections, datetime, json, sys
agg = collections.defaultdict(lambda: [0, 0, 0, None, None])
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get('message') != 'netbox request':
        continue
    end = datetime.datetime.fromisoformat(e['timestamp'].replace('Z', '+00:00')).timestamp()
    a = agg[(e['method_name'], e['endpoint'])]
    a[0] += 1; a[1] += e['objects']; a[2] += e['millis']
    start = end - e['millis'] / 1000
    a[3] = start if a[3] is None else min(a[3], start)
    a[4] = end if a[4] is None else max(a[4], end)
for (m, ep), (n, objs, ms, first, last) in sorted(agg.items(), key=lambda kv: kv[1][3]):
    print(f'   {m:6} {ep:34} requests {n:4}  objects {objs:5}  wall {last - first:6.1f} s  sum {ms / 1000:6.1f} s')
PY
}

sync_once() { # prints: seconds peakKiB writes reads created updated unchanged failed
  PNO_LOG_FORMAT=json RUST_LOG=proxmox_netbox_operator::netbox=debug /usr/bin/time -f "%e %M" -o "$WORK/time" \
    "$BIN" sync -f "$WORK/cluster.yaml" --secrets-dir "$WORK/secrets" --allow-endpoint-cidr 127.0.0.0/8 --output json > "$WORK/out.json" 2>"$WORK/requests.log" || true
  requests_by_endpoint >&2
  python3 - "$WORK/out.json" "$WORK/time" <<'PY'
import json, sys
o = json.load(open(sys.argv[1])); s = o['status'].get('sync') or {}
secs, kib = open(sys.argv[2]).read().split()[-2:]
print(secs, kib, s.get('writeRequests'), s.get('readRequests'), s.get('created'), s.get('updated'), s.get('unchanged'), s.get('failed'), o['success'])
PY
}

bench_discovery() { # 10 dry-run syncs of the 3-node demo topology with discovery on.
  # Every node is the harness sshd (stub node: 4 physical NICs); the figure per node is the
  # operator's own "hardware discovery" log line: connect, host-key check, key auth, the two
  # dmidecode via sudo -n and ip at once, ethtool on the 4 physical NICs, disconnect.
  # sshd reads authorized_keys as the test user: the state directory must be traversable.
  local ssh="$WORK/sshd"
  chmod 711 "$WORK"
  local port
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  bash scripts/harness/sshd.sh start "$ssh" "$port" normal >/dev/null
  # shellcheck disable=SC1091
  source "$ssh/sshd.env"
  trap 'bash scripts/harness/sshd.sh stop "$WORK/sshd" >/dev/null 2>&1 || true; kill $(cat "$WORK"/pve*/pid 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
  mkdir -p "$WORK/pve"
  "$FAKEPVE_PYTHON" "$FAKEPVE_LAUNCHER" --topology tests/topologies/demo.json --state-dir "$WORK/pve" >"$WORK/pve/log" 2>&1 &
  echo $! > "$WORK/pve/pid"
  for _ in $(seq 600); do [ -f "$WORK/pve/env.json" ] && break; sleep 0.1; done
  write_cluster "$WORK/pve"
  sed -i 's/^  netbox: .*/&\n  hardwareDiscovery: {enabled: true}/' "$WORK/cluster.yaml"
  mkdir -p "$WORK/secrets/node-ssh"
  cp "$SSH_KEY_FILE" "$WORK/secrets/node-ssh/id_ed25519"
  for node in pve1 pve2 pve3; do
    cat >> "$WORK/cluster.yaml" <<YAML
---
apiVersion: proxmox-netbox.io/v1alpha1
kind: NodeSSHCredential
metadata: {name: $RUN-$node, namespace: bench}
spec: {clusterRef: {name: $RUN}, nodeName: $node, address: 127.0.0.1, port: $SSH_PORT, username: $SSH_KEY_USER,
       privateKeySecretRef: {name: node-ssh, key: id_ed25519}, hostKeyFingerprint: "$SSH_HOST_FINGERPRINT", sudo: true}
YAML
  done
  for _ in $(seq 10); do
    PNO_LOG_FORMAT=json RUST_LOG=info "$BIN" sync --dry-run -f "$WORK/cluster.yaml" --secrets-dir "$WORK/secrets" --allow-endpoint-cidr 127.0.0.0/8 --output json 2>>"$WORK/log" >"$WORK/out.json" || true
  done
  python3 -c 'import json, sys; [print(n["name"], n["warning"], file=sys.stderr) for n in json.load(open(sys.argv[1]))["status"].get("nodes", []) if n.get("warning")]' "$WORK/out.json"
  python3 - "$WORK/log" <<'PY'
import json, statistics, sys
ms = []
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    f = e.get('fields', e)
    if f.get('message') == 'hardware discovery':
        assert f.get('ok') is True, e
        ms.append(int(f['millis']))
ms.sort()
print(f'discovery per node over loopback: {len(ms)} runs, median {statistics.median(ms)} ms, '
      f'p90 {ms[int(len(ms) * 0.9) - 1]} ms, max {ms[-1]} ms '
      '(one connection; dmidecode -t 1, -t 3 via sudo -n, ip -o link show, ethtool on 4 physical NICs)')
print(f'all runs (ms): {ms}')
PY
}

bench_marks() { # $1 = guests. One bootstrap sync of the demo topology creates the tag and the
  # custom fields; then the floor of the same guests with each set of marks, in one run.
    GUESTS="$1"
  bootstrap_marks
  start_pve "$WORK/pve"
  local variant
  for variant in "" "--marks cf" "--marks tag" "--marks both" "--same-objects" \
    "--same-objects --mac-at-create" "--same-objects --marks cf --mac-at-create"; do
    # shellcheck disable=SC2086
    echo "floor ${variant:-(bare)}: $("$FAKEPVE_PYTHON" scripts/bench/floor.py "$WORK/pve/expected.json" "$NETBOX_URL" "$NETBOX_TOKEN" "$RUN" $variant)"
  done
}

if [ "$GUESTS" = discovery ]; then
  bench_discovery
  exit 0
fi
if [ "$GUESTS" = marks ]; then
  bench_marks "${2:-1000}"
  exit 0
fi

start_pve "$WORK/pve"
echo "== floor (bare bulk creates, $GUESTS guests)" >&2
FLOOR="$("$FAKEPVE_PYTHON" scripts/bench/floor.py "$WORK/pve/expected.json" "$NETBOX_URL" "$NETBOX_TOKEN" "$RUN")"
fresh_netbox
write_cluster "$WORK/pve"
echo "== first sync" >&2
FIRST="$(sync_once)"
echo "== no-op resync" >&2
NOOP="$(sync_once)"
kill "$(cat "$WORK/pve/pid")"
start_pve "$WORK/pve2" --mutate-percent 1
write_cluster "$WORK/pve2"
echo "== resync after 1% of the guests changed" >&2
CHANGED="$(sync_once)"
echo "== floor, same objects (ownership marks, MACs given at interface creation, the primary IP PATCH pass)" >&2
fresh_netbox
bootstrap_marks
FLOOR_SAME="$("$FAKEPVE_PYTHON" scripts/bench/floor.py "$WORK/pve2/expected.json" "$NETBOX_URL" "$NETBOX_TOKEN" "$RUN" --same-objects --mac-at-create)"
cat <<OUT
guests=$GUESTS
floor (bare creates):  $FLOOR
floor (same objects):  $FLOOR_SAME
columns: seconds peakRssKiB writeRequests readRequests created updated unchanged failed success
first:   $FIRST
noop:    $NOOP
changed: $CHANGED
OUT
