#!/usr/bin/env bash
# Where the time goes, per stage (and per round of the taylor search), from the runs' own
# --report files, for three cases:
#   1. data-free (mse) on a synthetic 7B-shaped layer (one decoder layer of a Llama-2-7B shape,
#      BF16, made by bench-gen-checkpoint once into DIR/layer7b);
#   2. the full method (--sensitivity taylor --gptq --reorder, the README's recommended
#      command) on austen-256 at --budget 3.0, with the time of one forward pass over the same
#      calibration data (scalebits-eval --windows 64) measured in the same run: the ratio is
#      the issue's "forward passes" figure;
#   3. the same data-free run on austen-256 (small: the fixed costs);
#   4. taylor on stories260K.
# Each case also prints the plan's peak memory per rank (--plan) against the measured peak RSS.
# Usage: bench/profile.sh [--dir /tmp/sb-profile] [--threads N] [--skip-7b]
# SB_BUILD_DIR picks the build (default <repo>/build), SB_SHARED_DIR the shared models.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
build=${SB_BUILD_DIR:-$repo/build}
shared=${SB_SHARED_DIR:-$repo/../shared}
dir=${TMPDIR:-/tmp}/sb-profile threads=$(nproc) skip7b=0
while [ $# -gt 0 ]; do
  case $1 in
    --dir) dir=$2; shift 2;;
    --threads) threads=$2; shift 2;;
    --skip-7b) skip7b=1; shift;;
    *) echo "usage: $0 [--dir DIR] [--threads N] [--skip-7b]" >&2; exit 2;;
  esac
done
cmake --build "$build" -j"$(nproc)" --target scalebits-mpi scalebits-eval bench-gen-checkpoint >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$dir"
austen=$shared/models/austen-256
# On a shared machine libgomp's spinning threads steal the cores of the ones they wait for, and
# the calibrated passes (more, smaller parallel regions) suffer more than scalebits-eval: the
# in-run ratio would measure the load (README, Speed). Passive waiting unless the caller says.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
echo "load: $(uptime | sed 's/.*load average: //')   threads: $threads   OMP_WAIT_POLICY=$OMP_WAIT_POLICY   $(date -u +%FT%TZ)"

# the plan's peak memory per rank (MiB) for the same arguments, against the run's measured peak
plan_memory() {  # report.json args...
  local report=$1; shift
  local planned
  planned=$("$build/scalebits-mpi" "$@" --plan 2>/dev/null |
    sed -n 's/.*peak memory per rank about \([0-9.]*\) \([KMG]i*B\).*/\1 \2/p' |
    awk '{ f = $2 == "GiB" ? 1024 : $2 == "KiB" ? 1 / 1024 : 1; printf "%.1f", $1 * f }')
  python3 - "$report" "$planned" <<'EOF'
import json, sys
measured = json.load(open(sys.argv[1]))["peak_rss_bytes"] / 1048576
planned = float(sys.argv[2])
print("  memory: plan %.1f MiB, measured peak RSS %.1f MiB: plan/measured %.2f" % (planned, measured, planned / measured))
EOF
}

# seconds of the stages of a --report file, one "name s" per line, and the taylor rounds
stages() {
  python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
sec = r["seconds"]
total = sum(v for k, v in sec.items() if not k.startswith("refine_"))
print("  %-18s %8.2f s" % ("total", total))
for k, v in sec.items():
    share = "" if k.startswith("refine_") else "%5.1f%%" % (100 * v / total if total else 0)
    print("  %-18s %8.2f s %s" % (k, v, share))
print("  peak RSS           %8.1f MiB" % (r["peak_rss_bytes"] / 1048576))
ref = r.get("refine")
if ref:
    print("  taylor: %d rounds, %d retries, %d calibration passes, %.1f MiB cached" %
          (ref["rounds"], ref["retries"], ref["passes"], ref["cache_bytes_rank0"] / 1048576))
    for i, x in enumerate(ref["per_round"]):
        print("    round %2d: %6.2f s, %d check(s), predicted %+.5f measured %+.5f" %
              (i + 1, x["seconds"], x["checks"], x["predicted"], x["measured"]))
EOF
}

if [ "$skip7b" = 0 ]; then
  if [ ! -f "$dir/layer7b/config.json" ]; then
    "$build/bench/bench-gen-checkpoint" --out "$dir/layer7b" --layers 1 >/dev/null
  fi
  echo
  echo "1. data-free (mse), synthetic 7B-shaped layer ($(du -sh "$dir/layer7b" | cut -f1)), 1 rank x $threads threads"
  "$build/scalebits-mpi" --model "$dir/layer7b" --budget 3 --out "$dir/o.h5" --threads "$threads" \
    --report "$dir/r1.json" --quiet
  stages "$dir/r1.json"
  plan_memory "$dir/r1.json" --model "$dir/layer7b" --budget 3 --threads "$threads"
fi

echo
echo "2. full method on austen-256 (--sensitivity taylor --gptq --reorder, budget 3.0), 1 rank x $threads threads"
start=$(date +%s.%N)
"$build/scalebits-eval" --model "$austen" --text "$austen/calib.txt" --windows 64 --threads "$threads" >/dev/null
forward=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
start=$(date +%s.%N)
"$build/scalebits-mpi" --model "$austen" --budget 3.0 --calib-text "$austen/calib.txt" --calib-ctx 256 \
  --calib-windows 64 --sensitivity taylor --gptq --reorder --tile 128x128 --group 64 --bits 2,3,4,5,6,8 \
  --out "$dir/o.h5" --threads "$threads" --report "$dir/r2.json" --quiet
full=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
stages "$dir/r2.json"
plan_memory "$dir/r2.json" --model "$austen" --budget 3.0 --calib-text "$austen/calib.txt" --calib-ctx 256 \
  --calib-windows 64 --sensitivity taylor --gptq --reorder --tile 128x128 --group 64 --bits 2,3,4,5,6,8 --threads "$threads"
echo "  forward pass over the calibration data (scalebits-eval --windows 64): $forward s"
echo "  full method: $full s = $(awk -v f="$full" -v p="$forward" 'BEGIN { printf "%.1f", f / p }') forward passes"

echo
echo "3. data-free (mse) on austen-256, 1 rank x $threads threads"
"$build/scalebits-mpi" --model "$austen" --budget 3.0 --tile 128x128 --group 64 --bits 2,3,4,5,6,8 \
  --out "$dir/o.h5" --threads "$threads" --report "$dir/r3.json" --quiet
stages "$dir/r3.json"
plan_memory "$dir/r3.json" --model "$austen" --budget 3.0 --tile 128x128 --group 64 --bits 2,3,4,5,6,8 --threads "$threads"

stories=$shared/models/stories260K-hf
tokens=$shared/data/tinystories_val.tok512.u32
if [ -f "$stories/model.safetensors" ]; then
  echo
  echo "4. taylor on stories260K (the quality table's protocol, budget 3.5), 1 rank x $threads threads"
  sargs="--model $stories --budget 3.5 --tile 32x32 --group 32 --bits 2,3,4,8 --calib $tokens --calib-ctx 256 --calib-windows 64 --sensitivity taylor"
  "$build/scalebits-mpi" $sargs --out "$dir/o.h5" --threads "$threads" --report "$dir/r4.json" --quiet
  stages "$dir/r4.json"
  plan_memory "$dir/r4.json" $sargs --threads "$threads"
fi
rm -f "$dir/o.h5"
echo "load: $(uptime | sed 's/.*load average: //')"
