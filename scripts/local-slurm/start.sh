#!/usr/bin/env bash
# Start a throw-away single-node SLURM (munged + slurmctld + slurmd) on this machine, without
# systemd, for the tests and CI. Needs root and Debian's packages:
#     apt-get install -y slurm-wlm munge
# Everything lives under $GIBLET_SLURM_ROOT (default /tmp/giblet-slurm); stop.sh stops exactly the
# daemons started here, by PID. Then:  export SLURM_CONF=$GIBLET_SLURM_ROOT/etc/slurm.conf
# Settings (environment): GIBLET_SLURM_GPUS (fake GPUs, default 2), GIBLET_SLURM_MEM_MB (default
# 8000), GIBLET_SLURM_PARTITION (default debug).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${GIBLET_SLURM_ROOT:-/tmp/giblet-slurm}"
GPUS="${GIBLET_SLURM_GPUS:-2}"
MEM="${GIBLET_SLURM_MEM_MB:-8000}"
PARTITION="${GIBLET_SLURM_PARTITION:-debug}"
NODE="$(hostname -s)"
MUNGE_SOCKET=/run/munge/munge.socket.2

for tool in munged slurmctld slurmd sbatch; do
  command -v "$tool" >/dev/null || { echo "start.sh: $tool not found (apt-get install -y slurm-wlm munge)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "start.sh: needs root (slurmd runs jobs as their user)" >&2; exit 2; }
if [ -S "$MUNGE_SOCKET" ] && munge -n -S "$MUNGE_SOCKET" >/dev/null 2>&1; then
  echo "start.sh: a munged already serves $MUNGE_SOCKET; is a SLURM already running here?" >&2; exit 2
fi
rm -rf "$ROOT"
mkdir -p "$ROOT"/{etc,state,spool,log,munge,dev}
chmod 700 "$ROOT/munge"

# munge, on the default socket: SLURM's clients inside jobs look there.
mkdir -p /run/munge && chmod 755 /run/munge
dd if=/dev/urandom of="$ROOT/munge/munge.key" bs=1 count=1024 status=none
chmod 400 "$ROOT/munge/munge.key"
munged --force -F --key-file="$ROOT/munge/munge.key" --socket="$MUNGE_SOCKET" \
  --pid-file="$ROOT/munge/munged.pid" --log-file="$ROOT/munge/munged.log" \
  --seed-file="$ROOT/munge/munged.seed" >"$ROOT/log/munged.stdout" 2>&1 </dev/null &
echo $! > "$ROOT/munged.bgpid"
for _ in $(seq 50); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null

# slurm.conf: this machine's cores (slurmd -C), memory lowered to $MEM, and $GPUS fake GPUs.
NODEHW="$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e "s/RealMemory=[0-9]*/RealMemory=$MEM/")"
if [ "$GPUS" -gt 0 ]; then
  for i in $(seq 0 $((GPUS - 1))); do ln -sfn /dev/null "$ROOT/dev/gpu$i"; done
  GRES="Gres=gpu:$GPUS"
  sed -e "s|@NODE@|$NODE|g" -e "s|@ROOT@|$ROOT|g" -e "s|@LAST@|$((GPUS - 1))|g" \
    "$HERE/gres.conf.in" > "$ROOT/etc/gres.conf"
else
  GRES=""
  echo "AutoDetect=off" > "$ROOT/etc/gres.conf"
fi
sed -e "s|@ROOT@|$ROOT|g" -e "s|@NODE@|$NODE|g" -e "s|@GRES@|$GRES|g" \
  -e "s|@PARTITION@|$PARTITION|g" -e "s|@NODEHW@|$NODEHW|g" "$HERE/slurm.conf.in" > "$ROOT/etc/slurm.conf"
export SLURM_CONF="$ROOT/etc/slurm.conf"

# Snakemake's jobstep plugin removes every SLURM_* variable (SLURM_CONF too) before it calls srun
# inside a job, so the configuration must also be at the compiled-in path, /etc/slurm.
mkdir -p /etc/slurm
for f in slurm.conf gres.conf; do
  if [ -e "/etc/slurm/$f" ] && [ ! -L "/etc/slurm/$f" ]; then
    echo "start.sh: /etc/slurm/$f is a real file; not replacing it" >&2; "$HERE/stop.sh"; exit 2
  fi
  ln -sfn "$ROOT/etc/$f" "/etc/slurm/$f"
done

slurmctld -D -i -f "$SLURM_CONF" >"$ROOT/log/slurmctld.stdout" 2>&1 </dev/null &
echo $! > "$ROOT/slurmctld.bgpid"
for _ in $(seq 100); do (scontrol ping 2>/dev/null | grep -q UP) && break; sleep 0.2; done
slurmd -D -f "$SLURM_CONF" >"$ROOT/log/slurmd.stdout" 2>&1 </dev/null &
echo $! > "$ROOT/slurmd.bgpid"
state=""
for _ in $(seq 150); do
  state="$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)"
  case "$state" in idle*|mixed*|allocated*) break ;; esac
  sleep 0.2
done
case "$state" in
  idle*|mixed*|allocated*) sinfo -N -o '%N %P %T cpus=%c mem=%m %G' ;;
  *) echo "start.sh: the node did not come up (state '$state'); logs in $ROOT/log" >&2
     tail -5 "$ROOT/log/slurmctld.log" "$ROOT/log/slurmd.log" >&2 || true
     "$HERE/stop.sh"; exit 1 ;;
esac
echo "export SLURM_CONF=$SLURM_CONF"
