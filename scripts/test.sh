#!/usr/bin/env bash
# The full test suite (what CI runs): harness up, fmt, clippy, every test, packaging
# checks, harness down. Exits non-zero on any failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/proxmox-netbox-operator/cargo-target}"
export PNBO_HARNESS_DIR="${PNBO_HARNESS_DIR:-/tmp/pnbo-harness}"
# The shared fixtures: $PNBO_SHARED_DIR, else ../shared next to the clone, else /work/shared.
if [ -z "${PNBO_SHARED_DIR:-}" ]; then
  for d in "$(cd "$REPO/.." && pwd)/shared" /work/shared; do
    [ -d "$d/fixtures" ] && { PNBO_SHARED_DIR="$d"; break; }
  done
fi
[ -d "${PNBO_SHARED_DIR:-}/fixtures" ] || {
  echo "test.sh: the shared fixtures (../shared/fixtures) are not there; set PNBO_SHARED_DIR" >&2; exit 1; }
export PNBO_SHARED_DIR

cleanup() { bash scripts/harness/harness.sh down || true; }
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }

step "harness up"
bash scripts/harness/harness.sh up

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test (unit, integration against the harness, doc tests)"
cargo test --all-targets --no-fail-fast
cargo test --doc

if [ -x scripts/ci-checks.sh ]; then
  step "packaging checks"
  bash scripts/ci-checks.sh
fi
step "all checks passed"
