# Shared helpers for the shell tests (sourced). CTest sets SB_BUILD_DIR, SB_TEST_DATA,
# SB_SHARED_DIR, SB_SOURCE_DIR and SB_MPIEXEC.
set -uo pipefail
: "${SB_BUILD_DIR:?run through ctest}"
BIN=$SB_BUILD_DIR
MPIEXEC=${SB_MPIEXEC:-mpirun}
DEFAULT_MODEL=$SB_TEST_DATA/tiny-austen-kjv
STORIES=$SB_SHARED_DIR/models/stories260K-hf
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sb-cli-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
failures=0

fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
finish() { if [ "$failures" -eq 0 ]; then echo "all checks passed"; exit 0; else echo "$failures check(s) failed"; exit 1; fi; }

# mpirun with a hard timeout: a hang fails the test instead of stalling CI.
run_mpi() { local np=$1; shift; "$MPIEXEC" --timeout 300 -n "$np" "$@"; }

have_stories() { [ -f "$STORIES/model.safetensors" ]; }
skip_without_stories() {
  if ! have_stories; then echo "SKIP: $STORIES not present (fetched test material stays in ../shared)"; exit 77; fi
}

# Bits stored under /tensors, counted from HDF5's own storage sizes (not from our attributes).
stored_bits() {
  h5ls -r -v "$1" | awk '
    /^\/tensors\/[^ ]+\/[^ \/]+ +Dataset/ { counting = 1; next }
    /^\// { counting = 0 }
    counting && /Storage:/ { for (i = 1; i <= NF; i++) if ($i == "allocated") bytes += $(i - 1) }
    END { printf "%d\n", bytes * 8 }'
}

# a <= b for decimals
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b + 1e-12) }'; }
h5attr() { h5dump -a "/$2" "$1" | sed -n 's/^ *(0): *//p' | tr -d '"'; }
