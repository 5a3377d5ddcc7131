#!/usr/bin/env bash
# Where an expert's own calibration statistics become better than its layer's pooled ones: the
# measurement behind SB_EXPERT_MIN_ROWS (src/sb_calib_stats.h). Runs bench-expert-stats on
# qwen3-moe-tiny's calib.txt at 2, 3 and 4 bits and prints its tables with the load average;
# then what the rule costs or gains on held-out text: fisher --gptq at 3.0 bpw with the rule
# (--expert-min-tokens 16) and without it (0), from a starved calibration (1 window of 64 tokens)
# to the full one (64 windows of 256), with the experts it pooled and the perplexity.
#   bench/expert_threshold.sh [--shared DIR]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
build=${SB_BUILD_DIR:-$repo/build}
shared=${SB_SHARED_DIR:-$repo/../shared}
[ "${1:-}" = --shared ] && shared=$2
cmake --build "$build" -j2 --target bench-expert-stats scalebits-mpi scalebits-eval >/dev/null
echo "load: $(uptime | sed 's/.*load average: //')"
for bits in 2 3 4; do
  SB_SHARED_DIR=$shared "$build/bench/bench-expert-stats" --windows 256 --bits "$bits"
  echo
done
model=$shared/models/qwen3-moe-tiny
work=$(mktemp -d "${TMPDIR:-/tmp}/sb-threshold-XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "load: $(uptime | sed 's/.*load average: //')"
for calibration in "1 64" "4 128" "8 256" "64 256"; do
  set -- $calibration
  for threshold in 16 0; do
    "$build/scalebits-mpi" --model "$model" --budget 3.0 --group 64 --bits 2,3,4,5,6,8 --sensitivity fisher --gptq \
      --calib-text "$model/calib.txt" --calib-windows "$1" --calib-ctx "$2" --expert-min-tokens "$threshold" \
      --out "$work/t.h5" --report "$work/t.json" --quiet
    pooled=$(python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print(sum(sum(l['pooled']) for l in r['experts']['layers']))" "$work/t.json")
    echo "calibration $1 x $2 tokens, --expert-min-tokens $threshold: $pooled experts pooled, $("$build/scalebits-eval" --quantized "$work/t.h5" --text "$model/heldout.txt" --windows 200)"
  done
done
