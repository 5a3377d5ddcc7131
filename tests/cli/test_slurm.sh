#!/usr/bin/env bash
# A real Slurm on localhost runs the project's own batch templates (slurm/*.sbatch) on the
# embedded model: the output must equal a direct scalebits-mpi run, and a job that stops
# unfinished (exit 4) must requeue itself, resume from OUT.h5.state/ and produce the same file.
#
# Needs root on Debian: installs slurmctld slurmd slurm-client munge (--no-install-recommends)
# if missing, starts munged (if none runs), slurmctld and slurmd confined to a fresh directory
# on free ports (.ci/slurm-up.sh), and stops exactly those daemons at the end (.ci/slurm-down.sh,
# by pid file). Skips (77) when not root, not Debian, or the packages cannot be installed.
# About 30-60 s, most of it Slurm's scheduling ticks.
source "$(dirname "$0")/lib.sh"
SRC=${SB_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
skip() { echo "SKIP: $*"; exit 77; }

[ "$(id -u)" -eq 0 ] || skip "the Slurm test starts munged, slurmctld and slurmd: run it as root"
if [ ! -r /etc/debian_version ] || ! command -v apt-get > /dev/null; then
  skip "the Slurm test installs Debian packages"
fi
help=$("$BIN/scalebits-mpi" --help 2>&1)
for option in --resume --debug-stop-after; do
  grep -q -- "$option" <<< "$help" || skip "$BIN/scalebits-mpi has no $option"
done

packages=(slurmctld slurmd slurm-client munge)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! { timeout 300 apt-get -o DPkg::Lock::Timeout=120 update -qq &&
         timeout 300 apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${missing[@]}"; } \
       > "$WORK/apt.log" 2>&1; then
    tail -n 5 "$WORK/apt.log"
    skip "cannot install ${missing[*]}"
  fi
fi

SLURM_DIR=$WORK/slurm
JOBS=$WORK/jobs
mkdir -p "$JOBS"
submitted=()
cleanup() {
  if [ ${#submitted[@]} -gt 0 ] && [ -n "${SLURM_CONF:-}" ]; then
    timeout 20 scancel "${submitted[@]}" 2>/dev/null
    sleep 1
  fi
  bash "$SRC/.ci/slurm-down.sh" "$SLURM_DIR"
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! timeout 90 bash "$SRC/.ci/slurm-up.sh" "$SLURM_DIR"; then
  fail "single-node Slurm starts"
  finish
fi
export SLURM_CONF=$SLURM_DIR/slurm.conf
# The jobs inherit this environment (sbatch --export=ALL): Open MPI as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe
export OMPI_MCA_btl=self,vader

# The reference: the same job run directly, one process (the result is the same for any
# number of ranks).
"$BIN/scalebits-mpi" --budget 2.75 --out "$WORK/direct.h5" > "$WORK/direct.log" 2>&1
check "direct run exits 0" [ $? -eq 0 ]

job_field() { scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
# Waits (at most $3 s) until job $1 is in one of the states $2 (a regex); prints the state.
wait_state() {
  local state="" end=$(( $(date +%s) + $3 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    state=$(job_field "$1" JobState)
    if [[ $state =~ ^($2)$ ]]; then echo "$state"; return 0; fi
    sleep 0.5
  done
  echo "${state:-unknown}"
  return 1
}
same_tensors() { h5diff "$WORK/direct.h5" "$1" /tensors /tensors > /dev/null 2>&1; }
# Waits (at most 60 s) until job $1 has requeued itself (PENDING, Restarts=1), then until the
# node has finished cleaning up after the stopped start (idle again), and releases the job
# (scontrol requeue holds it ~2 minutes; released while the old start is still being cleaned
# up, its launch fails with "Job credential revoked"). Prints yes if it requeued.
requeued_and_released() {
  local end=$(( $(date +%s) + 60 )) state
  while [ "$(date +%s)" -lt "$end" ]; do
    state=$(job_field "$1" JobState)
    if [ "$state" = PENDING ] && [ "$(job_field "$1" Restarts)" = 1 ]; then
      while [ "$(date +%s)" -lt "$end" ] && [ "$(sinfo -h -o %T)" != idle ]; do sleep 0.5; done
      sleep 1
      timeout 20 scontrol update JobId="$1" StartTime=now
      echo yes
      return 0
    fi
    [[ $state =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY)$ ]] && break
    sleep 0.5
  done
  echo no
}

# Two ranks on one node, one CPU each (on a 1-CPU machine with --overcommit, which allocates
# one CPU for all tasks). The time limit is far from the --signal time, so Slurm sends no USR1
# during the test.
shape=(-N 1 -n 2 --ntasks-per-node=2 -c 1 --time=10 --signal=B:USR1@60)
[ "$(getconf _NPROCESSORS_ONLN)" -ge 2 ] || shape+=(--overcommit)
cd "$JOBS" || exit 1

# 1. The template as users submit it, with sbatch --wait.
start=$(date +%s)
J=$(timeout 150 sbatch --parsable --wait "${shape[@]}" \
      --export="ALL,SCALEBITS_BIN=$BIN/scalebits-mpi,BUDGET=2.75,OUT=$JOBS/slurm.h5" \
      "$SRC/slurm/scalebits.sbatch")
rc=$?
J=${J%%;*}
submitted+=("$J")
log=$JOBS/scalebits-$J.out
echo "--- job $J (sbatch --wait rc=$rc, $(( $(date +%s) - start )) s) log:"; cat "$log"
check "srun template: sbatch --wait exits 0" [ "$rc" -eq 0 ]
check "srun template: job COMPLETED" [ "$(job_field "$J" JobState)" = COMPLETED ]
check "srun template: 2 MPI ranks, not 2 singletons" grep -q "2 rank(s)" "$log"
check "srun template: output written" [ -f "$JOBS/slurm.h5" ]
bpw=$(h5attr "$JOBS/slurm.h5" achieved_bpw)
check "srun template: achieved_bpw ${bpw:-?} <= 2.75" le "${bpw:-99}" 2.75
check "srun template: tensors identical to the direct run" same_tensors "$JOBS/slurm.h5"
check "srun template: state directory removed" [ ! -e "$JOBS/slurm.h5.state" ]

# 2. The requeue path: the first start stops after 3 work units (exit 4, state saved), the
# script requeues the job, we release it (a requeued job is otherwise held ~2 minutes), the
# restart resumes and completes.
J=$(timeout 30 sbatch --parsable "${shape[@]}" \
      --export="ALL,SCALEBITS_BIN=$BIN/scalebits-mpi,BUDGET=2.75,OUT=$JOBS/requeue.h5,SCALEBITS_FIRST_ARGS=--debug-stop-after 3" \
      "$SRC/slurm/scalebits.sbatch")
J=${J%%;*}
submitted+=("$J")
log=$JOBS/scalebits-$J.out
restarted=$(requeued_and_released "$J")
check "requeue: the stopped job requeued itself (PENDING, Restarts=1)" [ "$restarted" = yes ]
check "requeue: first start stopped with exit 4" grep -q "scalebits exited with 4" "$log"
check "requeue: scalebits says how to continue" grep -q "rerun .*--resume" "$log"
check "requeue: state directory kept" [ -d "$JOBS/requeue.h5.state" ]
check "requeue: no output yet" [ ! -e "$JOBS/requeue.h5" ]
state=$(wait_state "$J" "COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY" 90)
echo "--- job $J log:"; cat "$log"
check "requeue: job COMPLETED after the restart ($state)" [ "$state" = COMPLETED ]
check "requeue: Restarts=1" [ "$(job_field "$J" Restarts)" = 1 ]
check "requeue: the restart ran with --resume" grep -q "start 1 .* --resume" "$log"
check "requeue: the restart did not repeat --debug-stop-after" sh -c "! grep 'start 1 ' '$log' | grep -q -- --debug-stop-after"
check "requeue: the restart finished" grep -q "scalebits exited with 0" "$log"
check "requeue: output written" [ -f "$JOBS/requeue.h5" ]
check "requeue: tensors identical to the direct run" same_tensors "$JOBS/requeue.h5"
check "requeue: state directory removed" [ ! -e "$JOBS/requeue.h5.state" ]

# 3. The production path: Slurm signals the batch shell (what --signal=B:USR1@N does near the
# time limit; scancel --batch --signal=USR1 delivers the same signal now), the script's trap asks
# scalebits to stop (OUT.h5.state/STOP), the job requeues itself and resumes.
# The first start is slowed down (--debug-unit-delay) so that the signal lands mid-run.
if grep -q -- --debug-unit-delay <<< "$help"; then
  J=$(timeout 30 sbatch --parsable "${shape[@]}" \
        --export="ALL,SCALEBITS_BIN=$BIN/scalebits-mpi,BUDGET=2.75,OUT=$JOBS/signal.h5,SCALEBITS_FIRST_ARGS=--debug-unit-delay 250" \
        "$SRC/slurm/scalebits.sbatch")
  J=${J%%;*}
  submitted+=("$J")
  log=$JOBS/scalebits-$J.out
  # signal once scalebits has saved some curves (the state directory exists)
  end=$(( $(date +%s) + 60 ))
  while [ "$(date +%s)" -lt "$end" ] && [ -z "$(ls "$JOBS/signal.h5.state/curves" 2>/dev/null)" ]; do sleep 0.2; done
  timeout 20 scancel --batch --signal=USR1 "$J"
  restarted=$(requeued_and_released "$J")
  check "USR1: the batch script's trap got the signal" grep -q "got USR1" "$log"
  check "USR1: scalebits stopped with exit 4" grep -q "scalebits exited with 4" "$log"
  check "USR1: the job requeued itself (PENDING, Restarts=1)" [ "$restarted" = yes ]
  state=$(wait_state "$J" "COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY" 90)
  echo "--- job $J log:"; cat "$log"
  check "USR1: job COMPLETED after the restart ($state)" [ "$state" = COMPLETED ]
  check "USR1: the restart resumed saved work" grep -q "resumed from" "$log"
  check "USR1: tensors identical to the direct run" same_tensors "$JOBS/signal.h5"
  check "USR1: state directory removed" [ ! -e "$JOBS/signal.h5.state" ]
else
  echo "note: $BIN/scalebits-mpi has no --debug-unit-delay: the signal path is not exercised"
fi

# 4. The mpirun template, once.
start=$(date +%s)
J=$(timeout 150 sbatch --parsable --wait "${shape[@]}" \
      --export="ALL,SCALEBITS_BIN=$BIN/scalebits-mpi,BUDGET=2.75,OUT=$JOBS/mpirun.h5" \
      "$SRC/slurm/scalebits-mpirun.sbatch")
rc=$?
J=${J%%;*}
submitted+=("$J")
log=$JOBS/scalebits-mpirun-$J.out
echo "--- job $J (sbatch --wait rc=$rc, $(( $(date +%s) - start )) s) log:"; cat "$log"
check "mpirun template: sbatch --wait exits 0" [ "$rc" -eq 0 ]
check "mpirun template: 2 MPI ranks" grep -q "2 rank(s)" "$log"
check "mpirun template: tensors identical to the direct run" same_tensors "$JOBS/mpirun.h5"

cd "$WORK" || exit 1
if [ "$failures" -gt 0 ]; then
  echo "--- Slurm logs"; tail -n 30 "$SLURM_DIR"/log/*.log
fi
finish
