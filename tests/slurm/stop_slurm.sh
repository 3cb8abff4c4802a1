#!/usr/bin/env bash
# Stops what tests/slurm/start_slurm.sh STATE_DIR started (munged is left running: it is shared).
set -u
STATE=$(realpath -m "$1")
export SLURM_CONF="$STATE/slurm.conf"
# Cancel what is left and let SLURM end it (its steps end their processes) before the daemons go.
scancel --user="$(id -un)" 2>/dev/null || true
for _ in $(seq 1 60); do
    [ -z "$(squeue -h 2>/dev/null)" ] && break
    sleep 0.5
done
for daemon in slurmd slurmctld; do
    if [ -s "$STATE/$daemon.pid" ]; then
        kill "$(cat "$STATE/$daemon.pid")" 2>/dev/null || true
    fi
done
for _ in $(seq 1 40); do
    pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break
    sleep 0.25
done
pkill -x slurmstepd 2>/dev/null || true
exit 0
