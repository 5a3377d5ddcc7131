#!/usr/bin/env bash
# The calibration pipeline under 2, 3 and 4 ranks matches the single-process runtime, and so
# does scalebits-eval run as a pipeline.
source "$(dirname "$0")/lib.sh"
for np in 2 3 4; do
  run_mpi "$np" "$BIN/tests/test_pipeline" > "$WORK/out$np.txt" 2>&1
  rc=$?
  cat "$WORK/out$np.txt" | grep -v '^$' | head -5
  check "pipeline with $np ranks matches one process" [ "$rc" -eq 0 ]
done
# scalebits-eval runs the same pipeline: the same line for any rank count
text=$DEFAULT_MODEL/heldout.txt
one=$("$BIN/scalebits-eval" --model "$DEFAULT_MODEL" --text "$text" --windows 40 --ctx 128 2>&1)
"$BIN/scalebits-mpi" --model "$DEFAULT_MODEL" --budget 3 --out "$WORK/q.h5" --quiet
one_q=$("$BIN/scalebits-eval" --quantized "$WORK/q.h5" --text "$text" --windows 40 --ctx 128 2>&1)
for np in 2 3; do
  check "eval under mpirun -n $np prints the one-process line ($one)" \
    [ "$(run_mpi "$np" "$BIN/scalebits-eval" --model "$DEFAULT_MODEL" --text "$text" --windows 40 --ctx 128 2>&1)" = "$one" ]
  check "eval --quantized under mpirun -n $np prints the one-process line ($one_q)" \
    [ "$(run_mpi "$np" "$BIN/scalebits-eval" --quantized "$WORK/q.h5" --text "$text" --windows 40 --ctx 128 2>&1)" = "$one_q" ]
done
finish
