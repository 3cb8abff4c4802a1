#!/usr/bin/env bash
# Starts a real, one-node SLURM on this machine for tests/core/cluster: munged, slurmctld and slurmd
# from Debian's slurm-wlm, configured for localhost in STATE_DIR (given as $1). Prints the path of the
# slurm.conf it wrote; clients find it through SLURM_CONF. Needs root (the daemons run as root).
# Stop it with tests/slurm/stop_slurm.sh STATE_DIR.
set -euo pipefail
STATE=$(realpath -m "$1")
mkdir -p "$STATE"/{spool,state,log}
HOST=$(hostname -s)
read -r CPUS MEM < <(slurmd -C | awk '/NodeName/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } print v["CPUs"], v["RealMemory"] }')

# munge: one key, readable by the munge user only; its daemon runs as that user.
if ! pgrep -x munged >/dev/null; then
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
fi

cat >"$STATE/slurm.conf" <<CONF
ClusterName=sftlocal
SlurmctldHost=$HOST
SlurmUser=root
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmdSpoolDir=$STATE/spool
StateSaveLocation=$STATE/state
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=300
DefMemPerCPU=1024
KillWait=10
InactiveLimit=0
SchedulerType=sched/backfill
MpiDefault=none
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$STATE/slurm.conf"
# Steps of an earlier SLURM on this machine (one stopped mid-kill) would confuse the new slurmd.
pkill -x slurmstepd 2>/dev/null || true
/usr/sbin/slurmctld -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF"
for _ in $(seq 1 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(drain|drng)'; then
        scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true  # a kill that failed before we came
    fi
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
        echo "$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
echo "slurm did not come up; see $STATE/log" >&2
exit 1
