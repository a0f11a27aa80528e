#!/usr/bin/env bash
# Stop what start.sh started, by the PIDs it recorded (never by name), and remove its /etc/slurm links.
ROOT="${GIBLET_SLURM_ROOT:-/tmp/giblet-slurm}"
export SLURM_CONF="$ROOT/etc/slurm.conf"

stop_pid() {  # name, pid file
  local file="$ROOT/$2" pid
  [ -s "$file" ] || return 0
  pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { echo "stop.sh: $1 ($pid) ignored SIGTERM for 15 s; SIGKILL"; kill -KILL "$pid"; }
  fi
  rm -f "$file"
}

# Cancel our jobs first, so their processes end cleanly before slurmd does.
if [ -s "$ROOT/slurmctld.bgpid" ] && kill -0 "$(cat "$ROOT/slurmctld.bgpid")" 2>/dev/null; then
  scancel --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 50); do [ -z "$(squeue -h -t R,CG,PD 2>/dev/null)" ] && break; sleep 0.2; done
fi
stop_pid slurmd slurmd.bgpid
stop_pid slurmctld slurmctld.bgpid
stop_pid munged munged.bgpid
for f in slurm.conf gres.conf; do
  link="/etc/slurm/$f"
  if [ -L "$link" ] && [ "$(readlink "$link")" = "$ROOT/etc/$f" ]; then rm -f "$link"; fi
done
exit 0
