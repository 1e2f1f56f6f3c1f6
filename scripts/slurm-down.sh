#!/usr/bin/env bash
# Stop the cluster started by slurm-up.sh (by its pid files), and munged when slurm-up.sh
# started it (one already running is left alone). Usage: scripts/slurm-down.sh [SCRATCH_DIR]
set -uo pipefail
SCRATCH=${1:-${STEADYRUN_SLURM_DIR:-/tmp/steadyrun-slurm}}
# slurmd.pid (one node) or slurmd-n1.pid, slurmd-n2.pid (two), then slurmctld.pid
for pidfile in "$SCRATCH"/slurmd.pid "$SCRATCH"/slurmd-*.pid "$SCRATCH"/slurmctld.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
done
if [ -f "$SCRATCH/munged-started-here" ] && [ -f /run/munge/munged.pid ]; then
    pid=$(cat /run/munge/munged.pid)
    kill "$pid" 2>/dev/null || true
    # wait until it is gone: a cluster started right after must not find a dying munged
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$SCRATCH/munged-started-here"
fi
exit 0
