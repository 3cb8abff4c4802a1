#!/usr/bin/env bash
# Stops what tests/slurm/start_slurm.sh STATE_DIR started (munged is left running: it is shared).
set -u
STATE=$(realpath -m "$1")
for daemon in slurmd slurmctld; do
    if [ -s "$STATE/$daemon.pid" ]; then
        kill "$(cat "$STATE/$daemon.pid")" 2>/dev/null || true
    fi
done
for _ in $(seq 1 40); do
    pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || exit 0
    sleep 0.25
done
exit 0
