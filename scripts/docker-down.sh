#!/usr/bin/env bash
# Stop the engine started by docker-up.sh (by its pid file), after removing its containers.
# The cached data root and image stay for the next run; DIR/data-root (used when the cache
# was busy) is removed. Usage: scripts/docker-down.sh [DIR]
set -uo pipefail
DIR=${1:-${STEADYRUN_DOCKER_DIR:-/tmp/steadyrun-docker}}
PIDFILE=$DIR/dockerd.pid
[ -f "$PIDFILE" ] || exit 0
pid=$(cat "$PIDFILE")
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    export DOCKER_HOST=unix://$DIR/docker.sock
    leftovers=$(docker ps -aq 2>/dev/null)
    [ -z "$leftovers" ] || docker rm -f $leftovers >/dev/null 2>&1 || true
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
fi
rm -f "$PIDFILE"
# the containerd that dockerd started goes with it; one left by a killed dockerd would
# keep the cache's lock
cpid=$(cat "$DIR/exec/containerd/containerd.pid" 2>/dev/null || true)
if [ -n "$cpid" ] && kill -0 "$cpid" 2>/dev/null \
        && [ "$(cat /proc/"$cpid"/comm 2>/dev/null)" = containerd ]; then
    kill "$cpid"
    for _ in $(seq 50); do kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$cpid" 2>/dev/null || true
fi
# a data root of its own (the cache was busy) goes with the engine
if [ -d "$DIR/data-root" ]; then
    umount -R "$DIR/exec" 2>/dev/null || true
    rm -rf "$DIR/data-root"
fi
exit 0
