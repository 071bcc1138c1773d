#!/usr/bin/env bash
# The harness's Kubernetes control plane (envtest-style: no kubelet, no scheduler):
# kube-apiserver with an embedded etcd, and kube-controller-manager, on 127.0.0.1,
# from the Go module in scripts/harness/kube (built once, cached by the hash of its
# go.mod, go.sum and main.go).
#
#   kube.sh build              build pno-kube when missing; prints its path
#   kube.sh start DIR PORT     start on https://127.0.0.1:PORT (etcd on PORT+1, PORT+2,
#                              the controller-manager on PORT+3); writes DIR/kubeconfig
#                              (admin) and DIR/kube.env
#   kube.sh stop DIR           stop both by PID
#
# RBAC is enforced (--authorization-mode=RBAC), the admin is a static token in group system:masters, ServiceAccount tokens are signed
# (the TokenRequest API works), the default admission plugins are on.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/kube"
CACHE="${PNBO_CACHE_DIR:-/var/cache/proxmox-netbox-operator}"

log() { printf '[kube] %s\n' "$*" >&2; }

# The Kubernetes release pinned in go.mod, stamped into the binaries (kubectl version,
# discovery) instead of the v0.0.0 of a module build.
kube_version() { awk '$1 == "k8s.io/kubernetes" { print $2 }' "$SRC/go.mod"; }

binary_path() {
  local key
  key="$( (cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go"; kube_version) | sha256sum | cut -c1-16)"
  echo "$CACHE/kube-$key/pno-kube"
}

cmd_build() {
  local bin
  bin="$(binary_path)"
  mkdir -p "$CACHE"
  # One build at a time (test.sh starts one early, in the background; `start` waits).
  exec 9>"$CACHE/kube-build.lock"
  flock 9
  if [ ! -x "$bin" ]; then
    command -v go >/dev/null || { echo "kube.sh: Go 1.26 is needed to build the control plane" >&2; exit 1; }
    log "building kube-apiserver, kube-controller-manager and etcd (about 15 min cold)"
    mkdir -p "$(dirname "$bin")"
    # Go 1.26: Kubernetes 1.36's own toolchain (see ../shared/ENVIRONMENT.md); never 1.27.
    local v stamp="" pkg
    v="$(kube_version)"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      stamp="$stamp -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$v" | cut -d. -f2)"
      stamp="$stamp -X $pkg.gitTreeState=clean"
    done
    (cd "$SRC" && GOTOOLCHAIN=local CGO_ENABLED=0 go build -p 2 -trimpath -ldflags "-s -w$stamp" \
      -o "$bin.tmp" .)
    mv "$bin.tmp" "$bin"
  fi
  flock -u 9
  echo "$bin"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# A CA, a serving certificate for 127.0.0.1 and the ServiceAccount signing key.
make_pki() {
  local pki="$1"
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=pno-harness-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' > "$pki/san.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 30 -extfile "$pki/san.ext" -out "$pki/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  chmod 600 "$pki"/*.key
}

# kubeconfig FILE SERVER CA TOKEN USER
write_kubeconfig() {
  local ca_data
  ca_data="$(base64 -w0 < "$3")"
  (umask 077; cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: pno-harness
    cluster:
      server: $2
      certificate-authority-data: $ca_data
users:
  - name: $5
    user:
      token: $4
contexts:
  - name: pno-harness
    context: {cluster: pno-harness, user: $5, namespace: default}
current-context: pno-harness
EOF
  )
}

cmd_start() {
  local dir="$1" port="$2" bin server
  bin="$(cmd_build)"
  mkdir -p "$dir"
  chmod 700 "$dir"
  server="https://127.0.0.1:$port"
  if running "$dir/apiserver.pid" && running "$dir/controller-manager.pid"; then
    return 0
  fi
  cmd_stop "$dir"
  rm -rf "$dir/etcd" "$dir/pki"
  make_pki "$dir/pki"
  local admin_token kcm_token
  admin_token="$(openssl rand -hex 24)"
  kcm_token="$(openssl rand -hex 24)"
  (umask 077; {
    echo "$admin_token,pno-admin,pno-admin,system:masters"
    echo "$kcm_token,system:kube-controller-manager,system:kube-controller-manager,"
  } > "$dir/pki/tokens.csv")

  # Every request's metadata (never bodies) in an audit log: the end-to-end suite checks
  # that no request of the operator's ServiceAccount was refused.
  cat > "$dir/pki/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
EOF
  "$bin" apiserver --etcd-dir "$dir/etcd" --etcd-port "$((port + 1))" -- \
    --bind-address=127.0.0.1 --secure-port="$port" \
    --authorization-mode=RBAC \
    --token-auth-file="$dir/pki/tokens.csv" \
    --client-ca-file="$dir/pki/ca.crt" \
    --tls-cert-file="$dir/pki/apiserver.crt" --tls-private-key-file="$dir/pki/apiserver.key" \
    --service-account-issuer="$server" \
    --service-account-key-file="$dir/pki/sa.pub" \
    --service-account-signing-key-file="$dir/pki/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --endpoint-reconciler-type=none \
    --allow-privileged=false \
    --cert-dir="$dir/pki" \
    --audit-policy-file="$dir/pki/audit-policy.yaml" --audit-log-path="$dir/audit.log" \
    --audit-log-maxsize=500 --audit-log-maxbackup=1 \
    >"$dir/apiserver.log" 2>&1 &
  echo $! > "$dir/apiserver.pid"

  write_kubeconfig "$dir/kubeconfig" "$server" "$dir/pki/ca.crt" "$admin_token" pno-admin
  write_kubeconfig "$dir/controller-manager.kubeconfig" "$server" "$dir/pki/ca.crt" "$kcm_token" \
    system:kube-controller-manager

  local ok=""
  for _ in $(seq 240); do
    if curl -fsS --cacert "$dir/pki/ca.crt" -H "Authorization: Bearer $admin_token" \
      "$server/readyz" >/dev/null 2>&1; then
      ok=1
      break
    fi
    running "$dir/apiserver.pid" || break
    sleep 0.5
  done
  if [ -z "$ok" ]; then
    tail -40 "$dir/apiserver.log" >&2
    echo "kube.sh: kube-apiserver did not become ready" >&2
    exit 1
  fi

  "$bin" controller-manager \
    --kubeconfig="$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$dir/controller-manager.kubeconfig" \
    --authentication-skip-lookup \
    --bind-address=127.0.0.1 --secure-port="$((port + 3))" \
    --cert-dir="$dir/pki" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$dir/pki/sa.key" \
    --root-ca-file="$dir/pki/ca.crt" \
    >"$dir/controller-manager.log" 2>&1 &
  echo $! > "$dir/controller-manager.pid"

  # The controller-manager is working once the default ServiceAccount exists.
  ok=""
  for _ in $(seq 240); do
    if curl -fsS --cacert "$dir/pki/ca.crt" -H "Authorization: Bearer $admin_token" \
      "$server/api/v1/namespaces/default/serviceaccounts/default" >/dev/null 2>&1; then
      ok=1
      break
    fi
    running "$dir/controller-manager.pid" || break
    sleep 0.5
  done
  if [ -z "$ok" ]; then
    tail -40 "$dir/controller-manager.log" >&2
    echo "kube.sh: kube-controller-manager did not start" >&2
    exit 1
  fi
  {
    echo "PNBO_KUBECONFIG=$dir/kubeconfig"
    echo "PNBO_KUBE_SERVER=$server"
    echo "PNBO_KUBE_CA_FILE=$dir/pki/ca.crt"
    echo "PNBO_KUBE_AUDIT_LOG=$dir/audit.log"
  } > "$dir/kube.env"
  log "kube-apiserver ready on $server (admin kubeconfig: $dir/kubeconfig)"
}

cmd_stop() {
  local dir="$1" pidfile
  for pidfile in "$dir/controller-manager.pid" "$dir/apiserver.pid"; do
    if running "$pidfile"; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
      for _ in $(seq 50); do running "$pidfile" || break; sleep 0.1; done
      running "$pidfile" && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

case "${1:-}" in
  build) cmd_build ;;
  start) cmd_start "$2" "$3" ;;
  stop) cmd_stop "$2" ;;
  *) echo "usage: $0 build | start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
