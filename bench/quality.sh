#!/usr/bin/env bash
# Quality tables: perplexity of scalebits models against budget, for every sensitivity, beside
# uniform precision and (for austen-256) llama.cpp's figures from ../shared/reference.md.
# Writes bench/results/quality-<model>.md (the table), .csv (the data) and .svg (the plot).
#   bench/quality.sh stories      # stories260K: 32x32 tiles, calibration on the first 64 windows, evaluation on the last 200 (~5 min)
#   bench/quality.sh austen       # austen-256: 128x128 tiles, calib.txt, the first 200 windows of heldout.txt (~40 min)
#   bench/quality.sh qwen3-moe    # qwen3-moe-tiny (Qwen3-MoE), calib.txt, held-out text (~1.5 h)
# SB_BUILD_DIR, SB_SHARED_DIR as for the other scripts; QUALITY_BUDGETS / QUALITY_SENS override;
# QUALITY_ARGS adds scalebits-mpi options to every run (e.g. "--threads 1" on a loaded machine).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
build=${SB_BUILD_DIR:-$repo/build}
shared=${SB_SHARED_DIR:-$repo/../shared}
which=${1:-stories}
out=$here/results
mkdir -p "$out"
cmake --build "$build" -j"$(nproc)" --target scalebits-mpi scalebits-eval >/dev/null
work=$(mktemp -d "${TMPDIR:-/tmp}/sb-quality-XXXXXX")
trap 'rm -rf "$work"' EXIT

case $which in
  stories)
    model=$shared/models/stories260K-hf
    tokens=$shared/data/tinystories_val.tok512.u32
    quant_args="--tile 32x32 --group 32 --bits 2,3,4,8"
    calib_args="--calib $tokens --calib-ctx 256 --calib-windows 64"
    eval_args="--tokens $tokens --ctx 256 --windows 200 --from-end"
    budgets=${QUALITY_BUDGETS:-"3.25 3.5 4.0 4.5"}
    sensitivities=${QUALITY_SENS:-"mse act fisher taylor mse+reorder fisher+reorder taylor+reorder"}
    uniform_variants="weighted"
    name=stories260K
    ;;
  austen)
    model=$shared/models/austen-256
    quant_args="--tile 128x128 --group 64 --bits 2,3,4,5,6,8"
    calib_args="--calib-text $model/calib.txt --calib-ctx 256 --calib-windows 64"
    eval_args="--text $model/heldout.txt --ctx 256 --windows 200"
    budgets=${QUALITY_BUDGETS:-"2.5 3.0 3.5 4.0"}
    sensitivities=${QUALITY_SENS:-"mse fisher+gptq taylor+gptq taylor+gptq+reorder"}
    uniform_variants="minmax weighted act act+gptq"
    name=austen-256
    ;;
  qwen3-moe)
    model=$shared/models/qwen3-moe-tiny
    quant_args="--tile 128x128 --group 64 --bits 2,3,4,5,6,8"
    calib_args="--calib-text $model/calib.txt --calib-ctx 256 --calib-windows 64"
    eval_args="--text $model/heldout.txt --ctx 256 --windows 200"
    budgets=${QUALITY_BUDGETS:-"2.5 3.0 3.5 4.0"}
    sensitivities=${QUALITY_SENS:-"mse fisher+gptq taylor+gptq taylor+gptq+reorder"}
    uniform_variants="minmax weighted act+gptq"
    name=qwen3-moe-tiny
    ;;
  *) echo "usage: $0 stories|austen|qwen3-moe" >&2; exit 2;;
esac

csv=$out/quality-$name.csv
echo "method,budget,bpw,perplexity,seconds" > "$csv"
echo "load average at the start: $(uptime | sed 's/.*load average: //')"
ppl() { "$build/scalebits-eval" "$@" $eval_args | sed 's/perplexity=\([0-9.]*\).*/\1/'; }
fp=$(ppl --model "$model")
echo "FP,16,16,$fp,0" >> "$csv"
echo "$name: FP perplexity $fp"
run() {   # label budget args...
  local label=$1 budget=$2; shift 2
  local start end
  start=$(date +%s.%N)
  "$build/scalebits-mpi" --model "$model" --budget "$budget" $quant_args "$@" ${QUALITY_ARGS:-} --out "$work/q.h5" \
    --report "$work/r.json" --quiet
  end=$(date +%s.%N)
  local bpw p
  bpw=$(sed -n 's/.*"achieved_bpw": \([0-9.]*\).*/\1/p' "$work/r.json")
  p=$(ppl --quantized "$work/q.h5")
  printf '%s,%s,%.4f,%s,%s\n' "$label" "$budget" "$bpw" "$p" "$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')" >> "$csv"
  printf '  %-22s budget %-5s %.4f bpw  perplexity %s\n' "$label" "$budget" "$bpw" "$p"
}
# a method is a sensitivity with optional +reorder / +gptq
method_args() {
  local method=$1 sens=${1%%+*} args=""
  [ "$sens" = mse ] || args="--sensitivity $sens $calib_args"
  case $method in *+reorder*) args="$args --reorder";; esac
  case $method in *+gptq*) args="$args --gptq"; [ "$sens" = mse ] && args="$args $calib_args";; esac
  echo "$args"
}
# uniform precision, with the in-tile quantizer variants side by side
for b in 2 3 4; do
  for variant in $uniform_variants; do
    case $variant in
      minmax) run "uniform $b-bit min-max" 16 --bits "$b" --search minmax;;
      weighted) run "uniform $b-bit" 16 --bits "$b";;
      act) run "uniform $b-bit act-weighted" 16 --bits "$b" --sensitivity act $calib_args;;
      act+gptq) run "uniform $b-bit act+gptq" 16 --bits "$b" --sensitivity act --gptq $calib_args;;
    esac
  done
done
for method in $sensitivities; do
  for budget in $budgets; do
    run "$method" "$budget" $(method_args "$method")
  done
done
python3 "$here/plot_quality.py" "$csv" "$out/quality-$name.svg" "$name" $([ "$which" != stories ] && echo "$which") > "$out/quality-$name.md"
echo "wrote $out/quality-$name.md, .csv, .svg"
