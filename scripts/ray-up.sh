#!/usr/bin/env bash
# Start a Ray head node on 127.0.0.1 for development and examples (Ray 2.x).
#
#   scripts/ray-up.sh [SCRATCH_DIR] [NUM_CPUS]     (default: /tmp/steadyrun-ray, all CPUs)
#
# Every listener is on loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), token authentication
# is on with a token made here (SCRATCH_DIR/auth_token), and Ray's session files stay in
# SCRATCH_DIR. The last lines are the `export` commands clients need; then use
# RayExecutor(address="127.0.0.1:PORT"). Stop it with scripts/ray-down.sh SCRATCH_DIR.
set -euo pipefail

SCRATCH=${1:-${STEADYRUN_RAY_DIR:-/tmp/steadyrun-ray}}
CPUS=${2:-$(nproc)}
RAY=${RAY:-$(command -v ray || true)}
if [ -z "$RAY" ]; then
    echo "ray-up: the 'ray' command is missing: pip install 'ray[default]'" >&2
    exit 77
fi
mkdir -p "$SCRATCH"
chmod 700 "$SCRATCH"
[ -s "$SCRATCH/auth_token" ] || python3 -c 'import secrets; print(secrets.token_hex(32))' \
    > "$SCRATCH/auth_token"
chmod 600 "$SCRATCH/auth_token"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$SCRATCH/auth_token"
"$RAY" start --head --port="$PORT" --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 \
    --num-cpus="$CPUS" --include-dashboard=false --disable-usage-stats \
    --temp-dir="$SCRATCH/tmp" >"$SCRATCH/ray-start.log" 2>&1 || {
    cat "$SCRATCH/ray-start.log" >&2
    exit 1
}
echo "127.0.0.1:$PORT" > "$SCRATCH/address"
echo "ray-up: head node at 127.0.0.1:$PORT (log: $SCRATCH/ray-start.log)" >&2
echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$SCRATCH/auth_token"
echo "export STEADYRUN_RAY_ADDRESS=127.0.0.1:$PORT"
