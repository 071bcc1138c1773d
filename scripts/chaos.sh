#!/usr/bin/env bash
# Fault-injection runs against the harness (NetBox, fakepve): the scenarios of
# tests/fault_netbox.rs (NetBox side, operator kills) and tests/fault_pve.rs (PVE side)
# with many seeds. Prints one line per run (the rows of
# docs/reliability.md) and exits non-zero when any run left a duplicate, a missing object,
# a deletion or a resync with writes.
#
#   scripts/chaos.sh                 seeds 1..20, 20 guests, 2 faulty syncs per run
#   CHAOS_SEEDS=7,8 CHAOS_GUESTS=90 scripts/chaos.sh
#   scripts/chaos.sh netbox_killed   only the scenarios whose test name has this
#   scripts/chaos.sh --skip netbox_killed
#
# The harness must be up (scripts/harness/harness.sh up); CI runs the short version (seeds
# 1,2) as part of the test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck disable=SC1091
source "${PNBO_HARNESS_DIR:-/tmp/pnbo-harness}/env"
export CHAOS_SEEDS="${CHAOS_SEEDS:-$(seq -s, 1 20)}"
export CHAOS_GUESTS="${CHAOS_GUESTS:-20}"
export CHAOS_FAULTY_SYNCS="${CHAOS_FAULTY_SYNCS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/proxmox-netbox-operator/cargo-target}"
# CHAOS_LOG keeps the whole test output (a file to follow while the runs go on).
if [ -n "${CHAOS_LOG:-}" ]; then
  log="$CHAOS_LOG"
else
  log="$(mktemp)"
  trap 'rm -f "$log"' EXIT
fi
echo "chaos: seeds $CHAOS_SEEDS, $CHAOS_GUESTS guests, $CHAOS_FAULTY_SYNCS faulty syncs per run" >&2
status=0
cargo test --test fault_netbox --test fault_pve -- --nocapture "$@" >"$log" 2>&1 || status=$?
grep -E '^seed [0-9]+:' "$log" || true
grep -E '^test result|runs that did not converge' "$log" >&2 || true
exit "$status"
