#!/usr/bin/env bash
# Starts a throwaway single-node Slurm (22.05, Debian 12) on localhost, as root, without systemd:
# munged (only if none is running), slurmctld and slurmd, all confined to DIR.
#
#   bash .ci/slurm-up.sh DIR      # then: export SLURM_CONF=DIR/slurm.conf; sbatch ...
#   bash .ci/slurm-down.sh DIR    # stops exactly the daemons this started (pid files in DIR)
#
# DIR gets slurm.conf, a fresh StateSaveLocation (job ids start at 1), the slurmd spool, the
# logs and the pid files. Nothing under /etc/slurm is touched; the daemons listen on free ports
# chosen here, so an existing Slurm on the machine is left alone. The packages must already be
# installed (slurmctld slurmd slurm-client munge; tests/cli/test_slurm.sh installs them).
# Recipe and its pitfalls: ../shared/recipes/mpi-hdf5-slurm.md, section 5.
set -euo pipefail
dir=${1:?usage: slurm-up.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
[ "$(id -u)" -eq 0 ] || { echo "slurm-up: must run as root" >&2; exit 1; }
for tool in slurmctld slurmd sbatch munged munge unmunge; do
  command -v "$tool" >/dev/null || { echo "slurm-up: $tool not installed" >&2; exit 1; }
done

# munge: the package postinst creates /etc/munge/munge.key but cannot start the service here.
# munged refuses to run as root with munge-owned logs ("Logfile is insecure"): run it as munge.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 1 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  cp /run/munge/munged.pid "$dir/munged.pid"   # ours to stop
  munge -n | unmunge >/dev/null || { echo "slurm-up: munge does not work" >&2; exit 1; }
fi

# two free TCP ports for slurmctld and slurmd
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
  local port
  for _ in $(seq 1 100); do
    port=$(( 20000 + RANDOM % 20000 ))
    if port_free "$port" && [ "$port" != "${1:-}" ]; then echo "$port"; return 0; fi
  done
  return 1
}
ctld_port=$(pick_port)
slurmd_port=$(pick_port "$ctld_port")

mkdir -p "$dir/state" "$dir/spool" "$dir/log"
ncpu=$(getconf _NPROCESSORS_ONLN)   # not nproc: it honours OMP_NUM_THREADS
mem=$(( $(awk '/MemTotal/ { print $2 }' /proc/meminfo) / 1024 - 1024 ))
cat > "$dir/slurm.conf" <<CONF
ClusterName=scalebits-ci
SlurmctldHost=localhost
SlurmctldPort=${ctld_port}
SlurmdPort=${slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=${dir}/state
SlurmdSpoolDir=${dir}/spool
SlurmctldPidFile=${dir}/slurmctld.pid
SlurmdPidFile=${dir}/slurmd.pid
SlurmctldLogFile=${dir}/log/slurmctld.log
SlurmdLogFile=${dir}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs=${ncpu} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=60 State=UP
CONF
export SLURM_CONF=$dir/slurm.conf

slurmctld -f "$SLURM_CONF"             # daemonizes; pid in $dir/slurmctld.pid
slurmd -f "$SLURM_CONF" -N localhost   # daemonizes; pid in $dir/slurmd.pid
for _ in $(seq 1 60); do
  state=$(sinfo -h -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
if [ "$(sinfo -h -o %T 2>/dev/null)" != idle ]; then
  echo "slurm-up: the node did not become idle; logs:" >&2
  tail -n 20 "$dir"/log/*.log >&2 || true
  exit 1
fi
echo "slurm-up: Slurm on localhost ($ncpu CPUs, ports $ctld_port/$slurmd_port); export SLURM_CONF=$SLURM_CONF"
