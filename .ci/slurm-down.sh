#!/usr/bin/env bash
# Stops exactly the daemons .ci/slurm-up.sh DIR started, by the pid files in DIR (slurmd,
# slurmctld, and munged only if slurm-up started it), and waits for them to exit.
#   bash .ci/slurm-down.sh DIR
dir=${1:?usage: slurm-down.sh DIR}
for name in slurmd slurmctld munged; do
  file=$dir/$name.pid
  [ -s "$file" ] || continue
  pid=$(cat "$file")
  # only a process of that name: a stale pid file must not kill something else
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$file"
done
exit 0
