#!/usr/bin/env bash
# Fuzzing smoke test: builds the cargo-fuzz targets of fuzz/ and runs each one briefly,
# starting from its committed seeds (fuzz/seeds/<target>/). Exits non-zero when a target
# does not build or when any input crashes one (a panic, a failed property). See
# docs/fuzzing.md for the targets, the long runs and how to reproduce a crash.
#
#   scripts/fuzz-smoke.sh                 every target, FUZZ_SMOKE_RUNS (20000) inputs each
#   scripts/fuzz-smoke.sh duration hw_ethtool   only these targets
#
# Environment: FUZZ_SMOKE_RUNS (inputs per target), FUZZ_TARGET_DIR (cargo target dir of
# the fuzz crate, default /var/cache/proxmox-netbox-operator/fuzz-target).
# cargo-fuzz is installed into ~/.cargo/bin when missing. The stable toolchain is used with
# RUSTC_BOOTSTRAP=1 (cargo-fuzz passes a few nightly-only flags).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_dir="$root/fuzz"
runs="${FUZZ_SMOKE_RUNS:-20000}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-/var/cache/proxmox-netbox-operator/fuzz-target}"
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# Options of each target: the largest input worth generating and its dictionary.
options() {
    case "$1" in
        pve_size | duration | endpoint_url) echo "-max_len=256" ;;
        pve_propstr) echo "-max_len=512" ;;
        hw_ethtool) echo "-max_len=2048 -dict=$fuzz_dir/dicts/text.dict" ;;
        hw_ip_link | hw_dmidecode) echo "-max_len=4096 -dict=$fuzz_dir/dicts/text.dict" ;;
                pve_reader | netbox_sync) echo "-max_len=16384 -dict=$fuzz_dir/dicts/json.dict" ;;
        provision_plan) echo "-max_len=4096 -dict=$fuzz_dir/dicts/json.dict" ;;
        *) echo "-max_len=4096" ;;
    esac
}

cd "$fuzz_dir"
start=$(date +%s)
cargo fuzz build --fuzz-dir "$fuzz_dir" --sanitizer none
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir "$fuzz_dir")
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for target in "${targets[@]}"; do
    seeds="$fuzz_dir/seeds/$target"
    [ -d "$seeds" ] || { echo "fuzz-smoke: no seeds in $seeds" >&2; failed+=("$target"); continue; }
    mkdir -p "$work/$target" "$fuzz_dir/artifacts/$target"
    t0=$(date +%s)
    # The first corpus directory receives new inputs: a scratch one, so seeds stay as committed.
    # shellcheck disable=SC2046
    if cargo fuzz run --fuzz-dir "$fuzz_dir" --sanitizer none "$target" "$work/$target" "$seeds" -- \
        -runs="$runs" $(options "$target") \
        -artifact_prefix="$fuzz_dir/artifacts/$target/" >"$work/$target.log" 2>&1; then
        echo "fuzz-smoke: $target ok ($runs runs, $(( $(date +%s) - t0 ))s)"
    else
        echo "fuzz-smoke: $target FAILED; the log ends with:" >&2
        tail -n 40 "$work/$target.log" >&2
        failed+=("$target")
    fi
done

echo "fuzz-smoke: ${#targets[@]} targets in $(( $(date +%s) - start ))s"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-smoke: crashes or failures in: ${failed[*]} (reproducers in fuzz/artifacts/)" >&2
    exit 1
fi
