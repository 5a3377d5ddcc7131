#!/usr/bin/env bash
# The calibration pipeline under 2, 3 and 4 ranks matches the single-process runtime.
source "$(dirname "$0")/lib.sh"
for np in 2 3 4; do
  run_mpi "$np" "$BIN/tests/test_pipeline" > "$WORK/out$np.txt" 2>&1
  rc=$?
  cat "$WORK/out$np.txt" | grep -v '^$' | head -5
  check "pipeline with $np ranks matches one process" [ "$rc" -eq 0 ]
done
finish
