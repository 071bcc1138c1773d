#!/usr/bin/env bash
# The full test suite (what CI runs): fmt, harness up (NetBox, fake PVE, sshd and a real
# kube-apiserver), clippy, every test (the end-to-end suite included), packaging checks,
# harness down. Exits non-zero on any failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/proxmox-netbox-operator/cargo-target}"
export PNBO_HARNESS_DIR="${PNBO_HARNESS_DIR:-/tmp/pnbo-harness}"
# shellcheck source=harness/shared-dir.sh
source scripts/harness/shared-dir.sh

cleanup() { bash scripts/harness/harness.sh down || true; }
trap cleanup EXIT

# Each step says how long the run has taken so far (CI's log shows where the time goes).
step() { printf '\n==> [%d s] %s\n' "$SECONDS" "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

# Cold, the NetBox install (mostly one core) and the Go build of the control plane run
# side by side, and the Rust test binaries compile meanwhile.
step "harness up (the Kubernetes control plane builds alongside; the tests compile)"
mkdir -p "$PNBO_HARNESS_DIR"
bash scripts/harness/kube.sh build > "$PNBO_HARNESS_DIR/kube-build.log" 2>&1 &
kube_build=$!
cargo test --all-targets --no-run --quiet > "$PNBO_HARNESS_DIR/cargo-build.log" 2>&1 &
cargo_build=$!
bash scripts/harness/harness.sh up
wait "$kube_build" || { cat "$PNBO_HARNESS_DIR/kube-build.log"; exit 1; }
wait "$cargo_build" || { cat "$PNBO_HARNESS_DIR/cargo-build.log"; exit 1; }

step "NetBox pages as a user sees them: styled, in headless Chromium (screenshot kept)"
bash scripts/harness/netbox-screenshot.sh

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test (unit, integration against the harness, end-to-end on its API server, doc tests)"
cargo test --all-targets --no-fail-fast
cargo test --doc

step "fuzzing smoke run (every cargo-fuzz target from its seeds; docs/fuzzing.md)"
bash scripts/fuzz-smoke.sh

if [ -x scripts/ci-checks.sh ]; then
  step "packaging checks"
  bash scripts/ci-checks.sh
fi
step "all checks passed"
