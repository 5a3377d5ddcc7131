#!/usr/bin/env bash
# The plan's peak memory per rank (`scalebits-mpi --plan`) against the measured peak RSS of the
# same run (`--report`: the largest VmHWM over the ranks), for a data-free run (mse), a
# calibrated one (fisher --gptq) and the full method (taylor --gptq --reorder), at 1 and 2
# ranks, on austen-256 (dense, 4.5M weights), qwen3-moe-tiny (MoE) and a synthetic dense model
# large enough that the fixed process overheads (MPI, HDF5, OpenBLAS: about 30-60 MiB) do not
# dominate (made once by bench-gen-checkpoint into DIR/synth). Prints the README's table.
# Memory does not depend on the machine's load, only the seconds do; nor on the number of
# calibration windows (a pass holds one micro-batch of --calib-batch windows): 16 windows
# (--windows) keep the calibrated runs short.
# Usage: bench/memory.sh [--dir DIR] [--models "austen moe synth"] [--runs "mse fisher taylor"]
#                        [--ranks "1 2"] [--windows 16]
# SB_BUILD_DIR picks the build (default <repo>/build), SB_SHARED_DIR the shared models.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
build=${SB_BUILD_DIR:-$repo/build}
shared=${SB_SHARED_DIR:-$repo/../shared}
dir=${TMPDIR:-/tmp}/sb-memory models="austen moe synth" runs="mse fisher taylor" ranks="1 2" windows=16
while [ $# -gt 0 ]; do
  case $1 in
    --dir) dir=$2; shift 2;;
    --models) models=$2; shift 2;;
    --runs) runs=$2; shift 2;;
    --ranks) ranks=$2; shift 2;;
    --windows) windows=$2; shift 2;;
    *) echo "usage: $0 [--dir DIR] [--models \"austen moe synth\"] [--runs \"mse fisher taylor\"] [--ranks \"1 2\"]" >&2
       exit 2;;
  esac
done
cmake --build "$build" -j"$(nproc)" --target scalebits-mpi bench-gen-checkpoint >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
  PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe OMPI_MCA_hwloc_base_binding_policy=none OMPI_MCA_btl=self,vader
mkdir -p "$dir"
synth_shape="--layers 2 --hidden 1024 --intermediate 2816 --heads 16 --kv-heads 8 --vocab 256"
if [[ " $models " == *" synth "* ]] && [ ! -f "$dir/synth/config.json" ]; then
  "$build/bench/bench-gen-checkpoint" --out "$dir/synth" $synth_shape >/dev/null
fi
echo "load: $(uptime | sed 's/.*load average: //')   $(date -u +%FT%TZ)"

# the plan's figure (MiB) for `args`, planned for `n` ranks
plan_mib() {  # n args...
  local n=$1; shift
  "$build/scalebits-mpi" "$@" --plan --plan-ranks "$n" 2>/dev/null |
    sed -n 's/.*peak memory per rank about \([0-9.]*\) \([KMG]i*B\).*/\1 \2/p' |
    awk '{ f = $2 == "GiB" ? 1024 : $2 == "KiB" ? 1 / 1024 : 1; printf "%.1f", $1 * f }'
}

printf "| model | run | ranks | plan (MiB) | measured peak RSS (MiB) | plan / measured |\n|---|---|---|---|---|---|\n"
for model in $models; do
  case $model in
    austen) path=$shared/models/austen-256 calib="--calib-text $shared/models/austen-256/calib.txt --calib-windows $windows"
            margs="--tile 128x128 --group 64 --bits 2,3,4,5,6,8 --budget 3.0";;
    moe)    path=$shared/models/qwen3-moe-tiny calib="--calib-text $shared/models/qwen3-moe-tiny/calib.txt --calib-windows $windows"
            margs="--budget 3.0";;
    synth)  path=$dir/synth calib="--calib-text $shared/models/austen-256/calib.txt --calib-windows $windows"
            margs="--budget 3.0";;
    *) echo "unknown model $model" >&2; exit 2;;
  esac
  for run in $runs; do
    case $run in
      mse) rargs="";;
      fisher) rargs="--sensitivity fisher --gptq $calib";;
      taylor) rargs="--sensitivity taylor --gptq --reorder $calib";;
      *) echo "unknown run $run" >&2; exit 2;;
    esac
    for n in $ranks; do
      # the machine's 2 cores shared by the ranks
      threads=$(( $(nproc) / n )); [ "$threads" -ge 1 ] || threads=1
      args="--model $path $margs $rargs --threads $threads"
      report=$dir/r-$model-$run-$n.json out=$dir/o-$model-$run-$n.h5
      rm -rf "$out" "$out.state"
      if [ "$n" = 1 ]; then
        "$build/scalebits-mpi" $args --out "$out" --report "$report" --quiet
      else
        mpirun -n "$n" "$build/scalebits-mpi" $args --out "$out" --report "$report" --quiet
      fi
      rm -rf "$out" "$out.state"
      planned=$(plan_mib "$n" $args)
      python3 - "$report" "$planned" "$model" "$run" "$n" <<'EOF'
import json, sys
measured = json.load(open(sys.argv[1]))["peak_rss_bytes"] / 1048576
planned = float(sys.argv[2])
model = {"austen": "austen-256", "moe": "qwen3-moe-tiny", "synth": "synthetic (2 layers, hidden 1024)"}[sys.argv[3]]
run = {"mse": "mse (data-free)", "fisher": "fisher --gptq", "taylor": "taylor --gptq --reorder"}[sys.argv[4]]
print("| %s | %s | %s | %.1f | %.1f | %.2f |" % (model, run, sys.argv[5], planned, measured, planned / measured))
EOF
    done
  done
done
echo "load: $(uptime | sed 's/.*load average: //')"
