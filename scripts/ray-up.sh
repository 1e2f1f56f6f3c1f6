#!/usr/bin/env bash
# Start a Ray head node on 127.0.0.1 for development and examples (Ray 2.x).
#
#   scripts/ray-up.sh [SCRATCH_DIR] [NUM_CPUS]     (default: /tmp/steadyrun-ray, all CPUs)
#
# Uses the `ray` of the project's environment ($STEADYRUN_VENV, default .venv; set up with
# `bash scripts/test.sh` or `pip install -e '.[ray]'`), else $RAY, else the one on PATH.
# Every listener is on loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), token authentication
# is on with a token made here (SCRATCH_DIR/auth_token), and Ray's session files stay in
# SCRATCH_DIR/tmp. SCRATCH_DIR/address and SCRATCH_DIR/pids record the head it started, for
# scripts/ray-down.sh SCRATCH_DIR, which stops exactly that head. A head that an earlier
# run left in SCRATCH_DIR is stopped first. The last lines are the `export` commands
# clients need: with them RayExecutor() and `steadyrun run --executor ray` use this head.
#
# STEADYRUN_RAY_NODES=N (default 1) starts N-1 more Ray nodes on this machine after the
# head, for gangs (RayExecutor(nodes=N, ...)): each a raylet of its own with 1 CPU, the
# custom resource "node<i>" (the head has "node1"), its own ports and its session files in
# SCRATCH_DIR/tmp/node<i>; every node's address is 127.0.0.1. ray-down.sh stops them all.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"

SCRATCH=${1:-${STEADYRUN_RAY_DIR:-/tmp/steadyrun-ray}}
CPUS=${2:-$(nproc)}
NODES=${STEADYRUN_RAY_NODES:-1}
case "$NODES" in ''|*[!0-9]*|0) echo "ray-up: STEADYRUN_RAY_NODES=$NODES: give a number >= 1" >&2; exit 2 ;; esac
HEAD_RESOURCES=""
[ "$NODES" -gt 1 ] && HEAD_RESOURCES='{"node1": 1}'
VENV=${STEADYRUN_VENV:-$root/.venv}
case "$VENV" in /*) ;; *) VENV="$root/$VENV" ;; esac
if [ -z "${RAY:-}" ]; then
    if [ -x "$VENV/bin/ray" ]; then RAY="$VENV/bin/ray"; else RAY=$(command -v ray || true); fi
fi
if [ -z "$RAY" ]; then
    echo "ray-up: no 'ray' command in $VENV/bin or on PATH:" \
         "bash scripts/test.sh sets up $VENV with it, or pip install 'steadyrun[ray]'" >&2
    exit 77
fi
mkdir -p "$SCRATCH"
chmod 700 "$SCRATCH"
SCRATCH="$(cd "$SCRATCH" && pwd)"
bash "$here/ray-down.sh" "$SCRATCH" >/dev/null 2>&1 || true
[ -s "$SCRATCH/auth_token" ] || python3 -c 'import secrets; print(secrets.token_hex(32))' \
    > "$SCRATCH/auth_token"
chmod 600 "$SCRATCH/auth_token"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$SCRATCH/auth_token"
"$RAY" start --head --port="$PORT" --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 \
    --num-cpus="$CPUS" --include-dashboard=false --disable-usage-stats \
    ${HEAD_RESOURCES:+--resources="$HEAD_RESOURCES"} \
    --temp-dir="$SCRATCH/tmp" >"$SCRATCH/ray-start.log" 2>&1 || {
    cat "$SCRATCH/ray-start.log" >&2
    bash "$here/ray-down.sh" "$SCRATCH" >/dev/null 2>&1 || true
    exit 1
}
# `ray start --address` refuses to join while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with
# 1 it swaps 127.0.0.1 for the public address: run Ray's command line with the check
# passed and the node's own address kept on loopback (its processes inherit the 0)
PY="$(dirname "$RAY")/python"
[ -x "$PY" ] || PY=python3
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
for i in $(seq 2 "$NODES"); do
    mkdir -p "$SCRATCH/tmp/node$i"
    low=$((30000 + 200 * i))
    "$PY" -c '
import sys
import ray._private.ray_constants as constants
import ray._private.services as services
constants.ENABLE_RAY_CLUSTER = True
services.get_node_ip_address = lambda address=None: "127.0.0.1"
from ray.scripts.scripts import main
sys.argv = ["ray", *sys.argv[1:]]
main()
' start --address="127.0.0.1:$PORT" --node-ip-address=127.0.0.1 --num-cpus=1 \
        --resources="{\"node$i\": 1}" --disable-usage-stats --temp-dir="$SCRATCH/tmp/node$i" \
        --node-manager-port="$(free_port)" --object-manager-port="$(free_port)" \
        --metrics-export-port="$(free_port)" --runtime-env-agent-port="$(free_port)" \
        --dashboard-agent-listen-port="$(free_port)" --dashboard-agent-grpc-port="$(free_port)" \
        --min-worker-port="$low" --max-worker-port="$((low + 199))" \
        >>"$SCRATCH/ray-start.log" 2>&1 || {
        cat "$SCRATCH/ray-start.log" >&2
        bash "$here/ray-down.sh" "$SCRATCH" >/dev/null 2>&1 || true
        exit 1
    }
done
echo "127.0.0.1:$PORT" > "$SCRATCH/address"
# the head's processes: those whose command line names its temp dir; "pid start-time"
# lines (start time in clock ticks since boot, /proc/PID/stat field 22) so that ray-down
# never signals a process that reused one of these pids
: > "$SCRATCH/pids"
for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [ "$pid" = "$$" ] && continue
    cmd=$( { tr '\0' ' ' < "$dir/cmdline"; } 2>/dev/null) || continue
    case "$cmd" in
        *"$SCRATCH/tmp/"* | *"$SCRATCH/tmp "*)
            stat=$(cat "$dir/stat" 2>/dev/null) || continue
            set -- ${stat##*) }
            echo "$pid ${20}" >> "$SCRATCH/pids" ;;
    esac
done
echo "ray-up: head node at 127.0.0.1:$PORT ($NODES node(s)), $(wc -l < "$SCRATCH/pids") process(es)" \
     "(log: $SCRATCH/ray-start.log; stop it with bash scripts/ray-down.sh $SCRATCH)" >&2
echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$SCRATCH/auth_token"
echo "export RAY_ADDRESS=127.0.0.1:$PORT STEADYRUN_RAY_ADDRESS=127.0.0.1:$PORT"
