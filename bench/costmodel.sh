#!/usr/bin/env bash
# The cost model behind `scalebits-mpi --plan`'s predicted wall time (mpi/sb_plan.h): measures
# its per-core costs here, then checks the model on two synthetic models of the same shape, 1x
# and 4x the layers: the costs are fitted on the 1x runs and the 4x runs are predicted from them
# (error printed). Prints the constants for mpi/sb_plan.c and the README's table.
#   bench/costmodel.sh [--dir /tmp/sb-cost] [--threads N] [--layers L] [--methods "mse fisher+gptq taylor+gptq"]
# SB_BUILD_DIR picks the build (default <repo>/build), SB_SHARED_DIR the shared models.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
build=${SB_BUILD_DIR:-$repo/build}
shared=${SB_SHARED_DIR:-$repo/../shared}
dir=${TMPDIR:-/tmp}/sb-cost threads=$(nproc) layers=2 methods="mse fisher+gptq taylor+gptq"
while [ $# -gt 0 ]; do
  case $1 in
    --dir) dir=$2; shift 2;;
    --threads) threads=$2; shift 2;;
    --layers) layers=$2; shift 2;;
    --methods) methods=$2; shift 2;;
    *) echo "usage: $0 [--dir DIR] [--threads N] [--layers L] [--methods \"mse fisher+gptq taylor+gptq\"]" >&2; exit 2;;
  esac
done
cmake --build "$build" -j"$(nproc)" --target scalebits-mpi scalebits-eval bench-gen-checkpoint bench-curves >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$dir"
calib=$shared/models/austen-256/calib.txt
echo "load: $(uptime | sed 's/.*load average: //')   threads: $threads   $(date -u +%FT%TZ)"

# 1. per-core costs
curve_ns=$("$build/bench/bench-curves" --rows 256 --repeat 2 | sed -n 's/.*thread(s): [0-9.]* s, \([0-9.]*\) ns.*/\1/p')
curve_ns=$(awk -v c="$curve_ns" 'BEGIN { printf "%.1f", c / 4 }')
gptq_ns=$("$build/bench/bench-curves" --rows 256 --repeat 1 --weighted | sed -n 's/.*thread(s): [0-9.]* s, \([0-9.]*\) ns.*/\1/p')
echo "curves: $curve_ns ns per weight and bitwidth on one core (bench-curves, defaults)"

# 2. two models of one shape, 1x and 4x the layers; mse, fisher+gptq, taylor+gptq
shape="--hidden 512 --intermediate 1376 --heads 8 --kv-heads 4 --vocab 256"
for n in "$layers" $((4 * layers)); do
  [ -f "$dir/m$n/config.json" ] || "$build/bench/bench-gen-checkpoint" --out "$dir/m$n" --layers "$n" $shape >/dev/null
done
run() {  # label layers args... -> "seconds" and the report in $dir/r-label-layers.json
  local label=$1 n=$2; shift 2
  local start end
  start=$(date +%s.%N)
  "$build/scalebits-mpi" --model "$dir/m$n" --budget 3 --out "$dir/o.h5" --threads "$threads" \
    --report "$dir/r-$label-$n.json" --quiet "$@"
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }'
}
plan_s() {  # layers args... -> the plan's predicted seconds
  local n=$1; shift
  "$build/scalebits-mpi" --model "$dir/m$n" --budget 3 --threads "$threads" --plan "$@" 2>/dev/null |
    sed -n 's/.*predicted wall time.*: \([0-9.]*\) s = .*/\1/p'
}
printf "%-14s %-7s %10s %10s %10s\n" method layers measured "plan (s)" "4x/1x"
for method in $methods; do
  case $method in
    mse) args="";;
    fisher+gptq) args="--sensitivity fisher --gptq --calib-text $calib";;
    taylor+gptq) args="--sensitivity taylor --gptq --calib-text $calib";;
  esac
  m1=$(run "$method" "$layers" $args)
  m4=$(run "$method" $((4 * layers)) $args)
  p1=$(plan_s "$layers" $args)
  p4=$(plan_s $((4 * layers)) $args)
  printf "%-14s %-7s %10s %10s\n" "$method" "$layers" "$m1" "$p1"
  printf "%-14s %-7s %10s %10s %10s\n" "$method" $((4 * layers)) "$m4" "$p4" \
    "$(awk -v a="$m1" -v b="$m4" 'BEGIN { printf "%.2f", b / a }')"
  # the model's scaling, fitted on the 1x run: predicted 4x = measured 1x x plan(4x) / plan(1x)
  awk -v m1="$m1" -v m4="$m4" -v p1="$p1" -v p4="$p4" -v name="$method" \
    'BEGIN { pred = m1 * p4 / p1; printf "  %s: 4x predicted from 1x %.2f s, measured %.2f s: error %+.1f%%; plan constants off by %.2fx at 1x\n", name, pred, m4, 100 * (pred - m4) / m4, m1 / p1 }'
done
rm -f "$dir/o.h5"
echo "load: $(uptime | sed 's/.*load average: //')"
