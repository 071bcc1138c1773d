#!/usr/bin/env bash
# The real-component test harness, on loopback only:
#   a real NetBox (PyPI) with PostgreSQL and Redis, the fake Proxmox VE API (PyPI fakepve)
#   seeded from a topology file, a real OpenSSH server with dmidecode/ip/ethtool stubs, and
#   a real kube-apiserver with etcd and kube-controller-manager (kube.sh; admin kubeconfig
#   in $PNBO_KUBECONFIG).
#
#   harness.sh up     start everything (idempotent); writes $PNBO_HARNESS_DIR/env and env.json
#   harness.sh down   stop everything it started (by PID)
#   harness.sh env    print the exports
#
# PNBO_TOPOLOGY (default tests/topologies/demo.json) picks the fake PVE's topology.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export PNBO_HARNESS_DIR="${PNBO_HARNESS_DIR:-/tmp/pnbo-harness}"
export PNBO_CACHE_DIR="${PNBO_CACHE_DIR:-/var/cache/proxmox-netbox-operator}"
FAKEPVE_VERSION="0.5.0"
FAKEPVE_VENV="$PNBO_CACHE_DIR/fakepve-$FAKEPVE_VERSION/venv"
TOPOLOGY="${PNBO_TOPOLOGY:-$REPO/tests/topologies/demo.json}"
SSH_PORT="${PNBO_SSH_PORT:-52222}"
KUBE_PORT="${PNBO_KUBE_PORT:-56443}"

log() { printf '[harness] %s\n' "$*" >&2; }

ensure_packages() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  [ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
  [ -f /usr/include/postgresql/libpq-fe.h ] || missing+=(libpq-dev)
  command -v gcc >/dev/null || missing+=(gcc)
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v sudo >/dev/null || missing+=(sudo)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_fakepve() {
  if [ ! -x "$FAKEPVE_VENV/bin/python" ] || ! "$FAKEPVE_VENV/bin/python" -c 'import fakepve, cryptography' 2>/dev/null; then
    log "installing fakepve==$FAKEPVE_VERSION"
    rm -rf "$FAKEPVE_VENV"
    python3 -m venv "$FAKEPVE_VENV"
    "$FAKEPVE_VENV/bin/pip" install -q "fakepve[crypto]==$FAKEPVE_VERSION"
  fi
}

fakepve_start() {
  local dir="$PNBO_HARNESS_DIR/fakepve"
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    return 0
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  "$FAKEPVE_VENV/bin/python" "$HERE/fakepve/serve.py" --topology "$TOPOLOGY" --state-dir "$dir" \
    >"$dir/log" 2>&1 &
  echo $! > "$dir/pid"
  for _ in $(seq 100); do
    [ -f "$dir/env.json" ] && return 0
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
    sleep 0.1
  done
  cat "$dir/log" >&2
  echo "harness: fakepve did not start" >&2
  exit 1
}

fakepve_stop() {
  local dir="$PNBO_HARNESS_DIR/fakepve"
  if [ -f "$dir/pid" ]; then
    kill "$(cat "$dir/pid")" 2>/dev/null || true
    rm -f "$dir/pid"
  fi
}

write_env() {
  local fp="$PNBO_HARNESS_DIR/fakepve/env.json"
  {
    bash "$HERE/netbox.sh" env
    python3 - "$fp" <<'PY'
import json, sys
for k, v in json.load(open(sys.argv[1])).items():
    print('%s=%s' % (k, v))
PY
    echo "FAKEPVE_PYTHON=$FAKEPVE_VENV/bin/python"
    echo "FAKEPVE_LAUNCHER=$HERE/fakepve/serve.py"
    echo "PNBO_REPO=$REPO"
    if [ -f "$PNBO_HARNESS_DIR/sshd/sshd.env" ]; then cat "$PNBO_HARNESS_DIR/sshd/sshd.env"; fi
    if [ -f "$PNBO_HARNESS_DIR/kube/kube.env" ]; then cat "$PNBO_HARNESS_DIR/kube/kube.env"; fi
  } > "$PNBO_HARNESS_DIR/env.plain"
  python3 - "$PNBO_HARNESS_DIR" <<'PY'
import json, os, shlex, sys
d = sys.argv[1]
env = {}
for line in open(os.path.join(d, 'env.plain')):
    line = line.rstrip('\n')
    if '=' in line:
        k, v = line.split('=', 1)
        env[k] = v
old = os.umask(0o077)
json.dump(env, open(os.path.join(d, 'env.json'), 'w'), indent=1, sort_keys=True)
with open(os.path.join(d, 'env'), 'w') as f:
    for k, v in sorted(env.items()):
        f.write('export %s=%s\n' % (k, shlex.quote(v)))
os.umask(old)
PY
  rm -f "$PNBO_HARNESS_DIR/env.plain"
}

cmd_up() {
  local t0
  t0=$(date +%s)
  mkdir -p "$PNBO_HARNESS_DIR"
  # 711: the sshd reads authorized_keys below it as the test users (traverse only).
  chmod 711 "$PNBO_HARNESS_DIR"
  ensure_packages
  ensure_fakepve
  bash "$HERE/netbox.sh" start
  fakepve_start
  if [ -x "$HERE/sshd.sh" ]; then
    bash "$HERE/sshd.sh" start "$PNBO_HARNESS_DIR/sshd" "$SSH_PORT"
  fi
  bash "$HERE/kube.sh" start "$PNBO_HARNESS_DIR/kube" "$KUBE_PORT"
  write_env
  log "up in $(( $(date +%s) - t0 )) s; environment in $PNBO_HARNESS_DIR/env (source it) and env.json"
}

cmd_down() {
  bash "$HERE/kube.sh" stop "$PNBO_HARNESS_DIR/kube"
  fakepve_stop
  if [ -x "$HERE/sshd.sh" ] && [ -d "$PNBO_HARNESS_DIR/sshd" ]; then
    bash "$HERE/sshd.sh" stop "$PNBO_HARNESS_DIR/sshd" || true
  fi
  bash "$HERE/netbox.sh" stop
  log "down"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cat "$PNBO_HARNESS_DIR/env" ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
