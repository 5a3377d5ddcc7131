#!/usr/bin/env bash
# --plan's peak memory per rank against the peak RSS the same run measures (--report), within
# 20%, on austen-256 (4.5M BF16 weights): data-free (mse), fisher --gptq on 1 and 2 ranks, and
# the full method (taylor --gptq --reorder). The calibrated runs peak at 100-270 MiB, of which the
# process itself (program, MPI, HDF5) is 23 MiB: the stage's layers, statistics, activations,
# GPTQ factors and tile stores decide them, so the check can fail if the plan's accounting is
# wrong. The data-free run is mostly the process and HDF5's write buffers (a unit is under
# 1 MiB): it checks those constants. One micro-batch of calibration windows (--calib-windows 4)
# keeps the runs short; a pass holds one micro-batch whatever the window count. Larger models:
# bench/memory.sh.
source "$(dirname "$0")/lib.sh"
AUSTEN=$SB_SHARED_DIR/models/austen-256
if [ ! -f "$AUSTEN/model.safetensors" ]; then
  echo "SKIP: $AUSTEN not present (fetched test material stays in ../shared)"
  exit 77
fi
cd "$WORK"
base="--model $AUSTEN --budget 3.0 --threads 1"
calib="--calib-text $AUSTEN/calib.txt --calib-windows 4"
mib() {  # the plan's "peak memory per rank about X UNIT" in MiB
  sed -n 's/.*peak memory per rank about \([0-9.]*\) \([KMG]i*B\).*/\1 \2/p' "$1" |
    awk '{ f = $2 == "GiB" ? 1024 : $2 == "KiB" ? 1 / 1024 : 1; printf "%.1f", $1 * f }'
}
case_check() {  # label ranks args...
  local label=$1 n=$2; shift 2
  "$BIN/scalebits-mpi" "$@" --plan --plan-ranks "$n" > "plan-$label.txt" 2>&1
  check "$label: plan exits 0" [ $? -eq 0 ]
  if [ "$n" = 1 ]; then
    "$BIN/scalebits-mpi" "$@" --out "$label.h5" --report "$label.json" --quiet > "$label.log" 2>&1
  else
    run_mpi "$n" "$BIN/scalebits-mpi" "$@" --out "$label.h5" --report "$label.json" --quiet > "$label.log" 2>&1
  fi
  check "$label: run exits 0" [ $? -eq 0 ]
  local planned measured ratio
  planned=$(mib "plan-$label.txt")
  measured=$(python3 -c 'import json, sys; print("%.1f" % (json.load(open(sys.argv[1]))["peak_rss_bytes"] / 1048576))' \
    "$label.json" 2>/dev/null)
  ratio=$(awk -v p="${planned:-0}" -v m="${measured:-0}" 'BEGIN { printf "%.3f", (m > 0 ? p / m : 0) }')
  echo "$label: plan $planned MiB, measured peak RSS $measured MiB, plan/measured $ratio"
  check "$label: plan at least 0.8x the measured peak ($ratio)" le 0.8 "$ratio"
  check "$label: plan at most 1.2x the measured peak ($ratio)" le "$ratio" 1.2
  rm -rf "$label.h5" "$label.h5.state"
}
case_check mse 1 $base
case_check fisher-gptq 1 $base --sensitivity fisher --gptq $calib
case_check fisher-gptq-2ranks 2 $base --sensitivity fisher --gptq $calib
case_check taylor 1 $base --sensitivity taylor --gptq --reorder $calib
finish
