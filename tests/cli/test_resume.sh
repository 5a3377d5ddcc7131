#!/usr/bin/env bash
# Stop and resume. One rank of three is killed (SIGKILL) in the middle of each stage (curves,
# allocation, quantize, write); the same command rerun with --resume on two ranks produces the
# datasets of an uninterrupted run. SIGUSR1 to a running job makes it save and exit with code 4.
# A resume with other options is refused, saying what differs.
source "$(dirname "$0")/lib.sh"
cd "$WORK"
args="--model $DEFAULT_MODEL --budget 2.75 --tile 64x64 --group 32 --unit-weights 8K --quiet"
run_mpi 1 "$BIN/scalebits-mpi" $args --out reference.h5
check "uninterrupted run" [ -f reference.h5 ]
for point in curves:4 allocate:0 quantize:3 write:5; do
  stage=${point%%:*}
  mkdir -p "$stage" && cd "$stage"
  run_mpi 3 "$BIN/scalebits-mpi" $args --out out.h5 --debug-kill-at "$point" > killed.log 2>&1
  rc=$?
  check "$stage: the killed run fails (rc $rc)" [ "$rc" -ne 0 ]
  check "$stage: no output file after the kill" [ ! -e out.h5 ]
  check "$stage: the state directory is kept" [ -f out.h5.state/fingerprint.txt ]
  run_mpi 2 "$BIN/scalebits-mpi" $args --out out.h5 --resume > resumed.log 2>&1
  check "$stage: resumed on 2 ranks, exit 0" [ $? -eq 0 ]
  check "$stage: resumed output equals the uninterrupted one" h5diff ../reference.h5 out.h5 /tensors /tensors
  check "$stage: allocation hash equal" [ "$(h5attr out.h5 allocation_sha256)" = "$(h5attr ../reference.h5 allocation_sha256)" ]
  check "$stage: state directory removed after success" [ ! -e out.h5.state ]
  cd "$WORK"
done
# work done before the kill is reused
mkdir -p reuse && cd reuse
run_mpi 2 "$BIN/scalebits-mpi" $args --out out.h5 --debug-kill-at quantize:5 > /dev/null 2>&1
run_mpi 3 "$BIN/scalebits-mpi" ${args/--quiet/} --out out.h5 --resume > resumed.log 2>&1
check "resume says the allocation was done" grep -q "the allocation is done" resumed.log
check "resume reuses quantized units" grep -q "unit(s) resumed" resumed.log
cd "$WORK"
# SIGUSR1 (what Slurm sends before the time limit): save, exit 4, resume later
mkdir -p signal && cd signal
"$MPIEXEC" --timeout 300 -n 2 "$BIN/scalebits-mpi" $args --out out.h5 --debug-unit-delay 300 > signal.log 2>&1 &
pid=$!
sleep 3
kill -USR1 "$pid"
wait "$pid"
rc=$?
check "SIGUSR1: exit code 4 (stopped, resumable) (rc $rc)" [ "$rc" -eq 4 ]
check "SIGUSR1: says how to continue" grep -q "rerun the same command with --resume" signal.log
check "SIGUSR1: no output yet" [ ! -e out.h5 ]
run_mpi 1 "$BIN/scalebits-mpi" $args --out out.h5 --resume > /dev/null 2>&1
check "SIGUSR1: resumed output equals the uninterrupted one" h5diff ../reference.h5 out.h5 /tensors /tensors
# a STOP file does the same
run_mpi 2 "$BIN/scalebits-mpi" $args --out stop.h5 --debug-stop-after 2 > /dev/null 2>&1
check "stop after 2 units: exit 4" [ $? -eq 4 ]
touch stop.h5.state/STOP
run_mpi 2 "$BIN/scalebits-mpi" $args --out stop.h5 --resume > /dev/null 2>&1
check "a STOP file left from before does not stop the resumed run" [ $? -eq 0 ]
cd "$WORK"
# the taylor search saves its state after every round: killed in round 3, resumed on 2 ranks
mkdir -p taylor && cd taylor
targs="--model $DEFAULT_MODEL --budget 2.75 --tile 64x64 --group 32 --sensitivity taylor --calib-text $DEFAULT_MODEL/heldout.txt --calib-ctx 128 --calib-windows 8 --quiet"
run_mpi 1 "$BIN/scalebits-mpi" $targs --out reference.h5
run_mpi 3 "$BIN/scalebits-mpi" $targs --out out.h5 --debug-kill-at refine:2 > killed.log 2>&1
check "taylor: the run killed in its search fails" [ $? -ne 0 ]
check "taylor: the search state was saved" [ -f out.h5.state/refine.bin ]
run_mpi 2 "$BIN/scalebits-mpi" ${targs/--quiet/} --out out.h5 --resume > resumed.log 2>&1
check "taylor: resumed on 2 ranks, exit 0" [ $? -eq 0 ]
check "taylor: the search resumed after round 2" grep -q "resuming after round 2" resumed.log
check "taylor: resumed output equals the uninterrupted one" h5diff reference.h5 out.h5 /tensors /tensors
cd "$WORK"
# resuming with other options is refused, naming what differs; without --resume it starts over
mkdir -p refuse && cd refuse
run_mpi 1 "$BIN/scalebits-mpi" $args --out out.h5 --debug-stop-after 2 > /dev/null 2>&1
run_mpi 1 "$BIN/scalebits-mpi" ${args/--group 32/--group 64} --out out.h5 --resume > refused.log 2>&1
check "resume with another --group: exit 2" [ $? -eq 2 ]
check "resume refusal names the difference" grep -q "group: 64 (was: group: 32)" refused.log
run_mpi 1 "$BIN/scalebits-mpi" ${args/--budget 2.75/--budget 3} --out out.h5 --resume > budget.log 2>&1
check "resume with another budget reuses the curves" [ $? -eq 0 ]
finish
