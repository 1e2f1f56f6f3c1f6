#!/usr/bin/env bash
# Stop the sshd started by sshd-up.sh (by its pid file). Usage: scripts/sshd-down.sh [DIR]
set -uo pipefail
DIR=${1:-${STEADYRUN_SSHD_DIR:-/tmp/steadyrun-sshd}}
pidfile=$DIR/sshd.pid
[ -f "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
fi
rm -f "$pidfile"
exit 0
