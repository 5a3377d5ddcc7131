#!/usr/bin/env bash
# MPI error discipline, end to end under mpirun: every MPI call of the project is checked
# (mpi/comm/sb_mpi.h; no bare call in mpi/, io/, tools/); --help and usage errors after MPI_Init
# end every rank cleanly (exit 0 / 2, one message, no abort); a rank that fails alone (test
# faults of mpi/comm/sb_fault.h: the output's temporary file cannot be opened on rank 1 before
# H5Fcreate, a data write fails on rank 2, an I/O error on rank 2 at the end of the open stage)
# ends every rank with that rank's message, exit 1, no hang and no output file.
source "$(dirname "$0")/lib.sh"
cd "$WORK"

# ---- every MPI call checked: a line that calls MPI_Xxx( must wrap it in SB_MPI_CALL/SB_MPI_TRY
# or compare its result with MPI_SUCCESS (MPI_Init, MPI_Finalize: before or after the handler)
bare=$(cd "$SB_SOURCE_DIR" && grep -nE '\bMPI_[A-Z][a-z_]+\(' mpi/*.c mpi/comm/*.c io/*.c tools/*.c |
         grep -vE 'SB_MPI_(CALL|TRY)|!= MPI_SUCCESS|^[^:]+:[0-9]+: *(/\*|\*)')
check "no unchecked MPI call in mpi/, io/, tools/" [ -z "$bare" ]
[ -n "$bare" ] && echo "$bare"

# ---- --help and usage errors under mpirun: every rank exits cleanly, one message
run_mpi 2 "$BIN/scalebits-eval" --help > help.txt 2> help.err
check "eval --help on 2 ranks: exit 0" [ $? -eq 0 ]
check "eval --help on 2 ranks: usage printed once" [ "$(grep -c '^usage: scalebits-eval' help.txt)" -eq 1 ]
check "eval --help on 2 ranks: no abort" sh -c "! grep -qiE 'abort|exited on signal|non-zero status' help.err"
run_mpi 2 "$BIN/scalebits-eval" --frobnicate > bad.txt 2> bad.err
rc=$?
check "eval bad option on 2 ranks: exit 2 (rc $rc)" [ $rc -eq 2 ]
check "eval bad option on 2 ranks: one message naming it" [ "$(grep -c 'scalebits-eval: .*--frobnicate' bad.err)" -eq 1 ]
check "eval bad option on 2 ranks: no abort" sh -c "! grep -qiE 'MPI_ABORT|exited on signal' bad.err"
run_mpi 2 "$BIN/scalebits-eval" --ctx 1 --text x > ctx.txt 2> ctx.err
check "eval bad value on 2 ranks: exit 2" [ $? -eq 2 ]
run_mpi 2 "$BIN/scalebits-mpi" --help > mhelp.txt 2>&1
check "scalebits-mpi --help on 2 ranks: exit 0, once" [ $? -eq 0 ] && [ "$(grep -c '^usage:' mhelp.txt)" -eq 1 ]

# ---- one rank fails alone: everyone exits 1 with its message, nothing left behind
fault_run() { # label, fault, ranks, expected text, scalebits-mpi arguments...
  local label=$1 fault=$2 np=$3 text=$4; shift 4
  mkdir -p "$WORK/$label" && cd "$WORK/$label"
  SCALEBITS_TEST_FAULT=$fault run_mpi "$np" "$BIN/scalebits-mpi" "$@" --out out.h5 > log.txt 2>&1
  local rc=$?
  check "$label: exit 1 (rc $rc; a hang would be mpirun's timeout)" [ $rc -eq 1 ]
  check "$label: one error line, from the failing rank" [ "$(grep -c 'scalebits-mpi: error: ' log.txt)" -eq 1 ]
  check "$label: the message says '$text'" grep -q "scalebits-mpi: error: .*$text" log.txt
  check "$label: no output file, no temporary beside it" [ -z "$(ls -A | grep -E '^out\.h5$|tmp')" ]
  cd "$WORK"
}
fault_run h5-create-rank1 h5_create@1 3 "rank 1: .*temporary file" --budget 3 --unit-weights 16K
fault_run h5-write-rank2 h5_write@2 3 "rank 2: .*HDF5 failed to write" --budget 3 --unit-weights 16K
fault_run open-io-rank2 agree_io@2 3 "rank 2: .*injected I/O error" --budget 3
fault_run h5-create-rank0 h5_create@0 2 "rank 0: .*temporary file" --budget 3
# after the failures above, a normal run in the same place works (nothing stale in the way)
cd "$WORK/h5-create-rank1"
run_mpi 3 "$BIN/scalebits-mpi" --budget 3 --unit-weights 16K --out out.h5 --resume --quiet
check "after an h5_create failure: --resume completes" [ $? -eq 0 ] && [ -f out.h5 ]
finish
