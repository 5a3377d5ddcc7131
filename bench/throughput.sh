#!/usr/bin/env bash
# Whole-run throughput of scalebits-mpi on a synthetic 7B-shaped sharded checkpoint, against
# plain `cp` of the same files on the same machine. Prints source GB/s, GB/s per core, the
# ratio to cp, and peak memory per rank. Usage:
#   bench/throughput.sh [--size-gb 2] [--ranks "1 2"] [--budget 3] [--dir /tmp/sb-bench]
#                       [--threads-per-rank N]   (default: the cores divided among the ranks)
# The checkpoint is generated once into DIR/model and reused (delete it to regenerate).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
build=${SB_BUILD_DIR:-$repo/build}
size_gb=2 ranks="1 2" budget=3 dir=${TMPDIR:-/tmp}/sb-bench threads_per_rank=0
while [ $# -gt 0 ]; do
  case $1 in
    --size-gb) size_gb=$2; shift 2;;
    --ranks) ranks=$2; shift 2;;
    --budget) budget=$2; shift 2;;
    --dir) dir=$2; shift 2;;
    --threads-per-rank) threads_per_rank=$2; shift 2;;
    *) echo "usage: $0 [--size-gb X] [--ranks \"1 2\"] [--budget B] [--dir DIR] [--threads-per-rank N]" >&2; exit 2;;
  esac
done
cmake --build "$build" -j"$(nproc)" --target scalebits-mpi bench-gen-checkpoint >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_hwloc_base_binding_policy=none OMPI_MCA_btl=self,vader
mkdir -p "$dir"
if [ ! -f "$dir/model/config.json" ]; then
  "$build/bench/bench-gen-checkpoint" --out "$dir/model" --size-gb "$size_gb" --shard-gb 1 >/dev/null
fi
bytes=$(du -sb "$dir/model" | cut -f1)
gb=$(awk -v b="$bytes" 'BEGIN { printf "%.3f", b / 1e9 }')
cores=$(nproc)
# cp of the same files, warm cache like the run below (both read what the page cache holds)
cat "$dir"/model/*.safetensors > /dev/null
rm -rf "$dir/copy"
start=$(date +%s.%N); cp -r "$dir/model" "$dir/copy"; sync; end=$(date +%s.%N)
rm -rf "$dir/copy"
cp_s=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
cp_rate=$(awk -v g="$gb" -v s="$cp_s" 'BEGIN { printf "%.3f", g / s }')
echo "checkpoint: $gb GB ($(ls "$dir"/model/*.safetensors | wc -l) shards), $cores cores"
echo "cp: $cp_s s = $cp_rate GB/s"
printf "%-6s %-9s %-9s %-14s %-12s %-14s %s\n" ranks seconds "GB/s" "GB/s/core" "vs cp" "peak RSS/rank" "stages (s)"
first=""
for np in $ranks; do
  threads=$(( cores / np )); [ "$threads" -ge 1 ] || threads=1
  [ "$threads_per_rank" -gt 0 ] && threads=$threads_per_rank
  start=$(date +%s.%N)
  mpirun -n "$np" "$build/scalebits-mpi" --model "$dir/model" --budget "$budget" --out "$dir/out.h5" \
    --threads "$threads" --report "$dir/report-$np.json" --quiet
  end=$(date +%s.%N)
  s=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
  used=$(( np * threads < cores ? np * threads : cores ))
  rss=$(sed -n 's/.*"peak_rss_bytes": \([0-9]*\).*/\1/p' "$dir/report-$np.json")
  stages=$(sed -n 's/.*"seconds": {\(.*\)},/\1/p' "$dir/report-$np.json" | tr -d '"')
  [ -n "$first" ] || first=$s
  printf "%-6s %-9s %-9s %-14s %-12s %-14s %s\n" "$np" "$s" "$(awk -v g="$gb" -v s="$s" 'BEGIN { printf "%.4f", g / s }')" \
    "$(awk -v g="$gb" -v s="$s" -v c="$used" 'BEGIN { printf "%.4f", g / s / c }')" \
    "$(awk -v g="$gb" -v s="$s" -v r="$cp_rate" 'BEGIN { printf "%.4f", g / s / r }')" \
    "$(awk -v r="$rss" 'BEGIN { printf "%.0f MiB", r / 1048576 }')" "$stages"
done
[ -n "$first" ] && echo "speed-up is seconds(first row) / seconds(row)"
rm -f "$dir/out.h5"
