#!/usr/bin/env bash
# Writes a synthetic Llama checkpoint with bench-gen-checkpoint, building it first if needed.
# Every argument goes to the generator (see its --help). Examples:
#   bench/gen_checkpoint.sh --out /scratch/synth-7b --size-gb 13            # 7B-shaped, ~13 GB
#   bench/gen_checkpoint.sh --out /tmp/tiny --small --layers 3 --shard-gb 0.0001
# SB_BUILD_DIR picks the build directory (default: <repo>/build).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
build=${SB_BUILD_DIR:-$repo/build}
if [[ ! -f $build/CMakeCache.txt ]]; then
  cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
if ! log=$(cmake --build "$build" --target bench-gen-checkpoint -j"$(nproc)" 2>&1); then
  printf '%s\n' "$log" >&2
  exit 1
fi
exec "$build/bench/bench-gen-checkpoint" "$@"
