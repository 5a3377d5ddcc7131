#!/usr/bin/env bash
# Cost of defining the output file's groups and datasets (collective HDF5 metadata) for the full
# tensor count of Qwen3-Coder-480B-A35B (30,321 tensors, 29,760 of them experts), from a
# header-only checkpoint: experts stacked per (layer, role) as scalebits-mpi writes them
# (docs/FORMAT.md, "Experts"), and, for comparison, one group per tensor (the layout before
# stacks). Prints one line per run with define and commit seconds, and the load average.
#   bench/h5_define.sh [--ranks "1 2 4"] [--config tests/data/configs/X.config.json]
#                      [--per-tensor-ranks "1"] [--dir /tmp/sb-h5-define]
# One group per tensor takes minutes per run (skip it with --per-tensor-ranks "").
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
build=${SB_BUILD_DIR:-$repo/build}
ranks="1 2 4" per_tensor_ranks="1" dir=${TMPDIR:-/tmp}/sb-h5-define
configs="$repo/tests/data/configs/qwen3-coder-480b-a35b.config.json"
while [ $# -gt 0 ]; do
  case $1 in
    --ranks) ranks=$2; shift 2;;
    --per-tensor-ranks) per_tensor_ranks=$2; shift 2;;
    --config) configs=$2; shift 2;;
    --dir) dir=$2; shift 2;;
    *) echo "usage: $0 [--ranks \"1 2 4\"] [--per-tensor-ranks \"1\"] [--config FILE] [--dir DIR]" >&2; exit 2;;
  esac
done
cmake --build "$build" -j2 --target bench-h5-define bench-gen-checkpoint >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe OMPI_MCA_hwloc_base_binding_policy=none
export OMPI_MCA_btl=self,vader
mkdir -p "$dir"
for config in $configs; do
  model=$dir/$(basename "$config" .config.json)
  [ -f "$model/config.json" ] || "$build/bench/bench-gen-checkpoint" --out "$model" --config "$config" --headers-only \
    >/dev/null 2>&1
  for np in $ranks; do
    echo "load: $(uptime | sed 's/.*load average: //')"
    mpirun -n "$np" "$build/bench/bench-h5-define" --model "$model" --budget 3 --out "$dir/out.h5" --quiet
  done
  for np in $per_tensor_ranks; do
    echo "load: $(uptime | sed 's/.*load average: //')"
    mpirun -n "$np" "$build/bench/bench-h5-define" --per-tensor --model "$model" --budget 3 --out "$dir/out.h5" --quiet
  done
done
