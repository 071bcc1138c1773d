#!/usr/bin/env bash
# The full test suite (what CI runs): harness up, fmt, clippy, every test, packaging
# checks, harness down. Exits non-zero on any failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/proxmox-netbox-operator/cargo-target}"
export PNBO_HARNESS_DIR="${PNBO_HARNESS_DIR:-/tmp/pnbo-harness}"
# shellcheck source=harness/shared-dir.sh
source scripts/harness/shared-dir.sh

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
