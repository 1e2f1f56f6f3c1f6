#!/usr/bin/env bash
# Stop the cluster started by slurm-up.sh (by its pid files). munged is left running:
# it is one per machine and harmless. Usage: scripts/slurm-down.sh [SCRATCH_DIR]
set -uo pipefail
SCRATCH=${1:-${STEADYRUN_SLURM_DIR:-/tmp/steadyrun-slurm}}
for daemon in slurmd slurmctld; do
    pidfile=$SCRATCH/$daemon.pid
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
done
exit 0
