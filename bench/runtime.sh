#!/usr/bin/env bash
# Runtime throughput: forward and forward+backward tokens/s on stories260K, austen-256 and
# qwen3-moe-tiny at
# ctx 256, and the achieved matmul GFLOP/s as a fraction of this machine's SGEMM peak (measured
# by the same program). Builds bench-runtime first if needed. Examples:
#   bench/runtime.sh                 # 1 thread, then every core
#   bench/runtime.sh --threads 2     # one run, arguments go to bench-runtime (see its --help)
# SB_BUILD_DIR picks the build directory (default: <repo>/build); SB_SHARED_DIR the shared
# models and text (default: <repo>/../shared).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
build=${SB_BUILD_DIR:-$repo/build}
shared=${SB_SHARED_DIR:-$repo/../shared}
if [[ ! -d $shared/models/stories260K-hf ]]; then
  echo "runtime.sh: $shared/models/stories260K-hf not found (set SB_SHARED_DIR)" >&2
  exit 1
fi
if [[ ! -f $build/CMakeCache.txt ]]; then
  cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
if ! log=$(cmake --build "$build" --target bench-runtime -j"$(getconf _NPROCESSORS_ONLN)" 2>&1); then
  printf '%s\n' "$log" >&2
  exit 1
fi
cores=$(getconf _NPROCESSORS_ONLN)  # before OMP_NUM_THREADS is set: nproc obeys it
# The runtime sets its own thread counts; keep OpenMP from spinning extra threads.
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
if [[ $# -gt 0 ]]; then
  exec "$build/bench/bench-runtime" --shared "$shared" "$@"
fi
"$build/bench/bench-runtime" --shared "$shared" --threads 1
if [[ $cores -gt 1 ]]; then
  echo
  "$build/bench/bench-runtime" --shared "$shared" --threads "$cores"
fi
