# Sourced: sets and exports PNBO_SHARED_DIR, the shared fixtures (../shared/fixtures):
# $PNBO_SHARED_DIR if set, else ../shared next to the clone, else /work/shared. Fails with a
# clear message when none has them. Needs REPO (the clone) set.
if [ -z "${PNBO_SHARED_DIR:-}" ]; then
  for d in "$(cd "$REPO/.." && pwd)/shared" /work/shared; do
    if [ -d "$d/fixtures" ]; then PNBO_SHARED_DIR="$d"; break; fi
  done
fi
if [ ! -d "${PNBO_SHARED_DIR:-}/fixtures" ]; then
  echo "the shared fixtures (../shared/fixtures next to the clone) are not there; set PNBO_SHARED_DIR" >&2
  exit 1
fi
export PNBO_SHARED_DIR
