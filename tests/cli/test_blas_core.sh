# The OpenBLAS core at start-up (mpi/sb_blas_start.h), end to end: a run on a CPU that OpenBLAS
# does not know (simulated: SB_TEST_BLAS_CORENAME=Prescott makes start-up believe OpenBLAS
# reported Prescott) re-starts itself with the best core this CPU supports, logs it, and gives
# the same result; an explicit OPENBLAS_CORETYPE is kept; under mpirun every rank does the same.
source "$(dirname "$0")/lib.sh"
# what this CPU supports, as the kernel reports it
if grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo && grep -qw avx512dq /proc/cpuinfo; then
  want=SkylakeX
elif grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  want=Haswell
else
  echo "SKIP: no AVX2 on this CPU: nothing faster to choose than what OpenBLAS runs"; exit 77
fi
unset OPENBLAS_CORETYPE
out=$WORK/out.h5
"$BIN/scalebits-mpi" --budget 3 --out "$WORK/plain.h5" > "$WORK/plain.log" 2>&1
check "a normal run logs the core it runs" grep -q "OpenBLAS core" "$WORK/plain.log"
SB_TEST_BLAS_CORENAME=Prescott "$BIN/scalebits-mpi" --budget 3 --out "$out" > "$WORK/sim.log" 2>&1
check "simulated Prescott: re-started with OPENBLAS_CORETYPE=$want" \
  grep -q "OpenBLAS picked Prescott.*re-started with OPENBLAS_CORETYPE=$want$" "$WORK/sim.log"
check "simulated Prescott: OpenBLAS then runs $want" grep -q "OpenBLAS core $want:" "$WORK/sim.log"
check "the same tensors as the plain run" h5diff "$WORK/plain.h5" "$out" /tensors /tensors
check "one start-up line per run (no loop)" [ "$(grep -c 'OpenBLAS core' "$WORK/sim.log")" -eq 1 ]
OPENBLAS_CORETYPE=Prescott SB_TEST_BLAS_CORENAME=Prescott "$BIN/scalebits-mpi" --budget 3 --out "$out" \
  > "$WORK/user.log" 2>&1
check "an explicit OPENBLAS_CORETYPE wins" grep -q "OpenBLAS core Prescott (OPENBLAS_CORETYPE=Prescott from the environment)" \
  "$WORK/user.log"
# under mpirun (PRRTE/PMIx) a rank that re-executes itself keeps its process id and its place
SB_TEST_BLAS_CORENAME=Prescott run_mpi 2 -x SB_TEST_BLAS_CORENAME "$BIN/scalebits-eval" \
  --model "$DEFAULT_MODEL" --text "$DEFAULT_MODEL/heldout.txt" --windows 2 --ctx 32 > "$WORK/eval.out" 2> "$WORK/eval.err"
check "mpirun -n 2 with re-started ranks: the pipeline evaluates" grep -q "perplexity=" "$WORK/eval.out"
check "mpirun -n 2: rank 0 says which core it chose" grep -q "re-started with OPENBLAS_CORETYPE=$want" "$WORK/eval.err"
finish
