#!/usr/bin/env bash
# Where an expert's own calibration statistics become better than its layer's pooled ones: the
# measurement behind SB_EXPERT_MIN_ROWS (src/sb_calib_stats.h). Runs bench-expert-stats on
# qwen3-moe-tiny's calib.txt at 2, 3 and 4 bits and prints its tables with the load average.
#   bench/expert_threshold.sh [--shared DIR]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
build=${SB_BUILD_DIR:-$repo/build}
shared=${SB_SHARED_DIR:-$repo/../shared}
[ "${1:-}" = --shared ] && shared=$2
cmake --build "$build" -j2 --target bench-expert-stats >/dev/null
echo "load: $(uptime | sed 's/.*load average: //')"
for bits in 2 3 4; do
  SB_SHARED_DIR=$shared "$build/bench/bench-expert-stats" --windows 256 --bits "$bits"
  echo
done
