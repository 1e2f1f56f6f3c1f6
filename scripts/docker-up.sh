#!/usr/bin/env bash
# Start a private Docker engine for the tests (Debian's docker.io) and give it a Python image.
#
#   scripts/docker-up.sh [DIR]      (default: /tmp/steadyrun-docker)
#
# Installs docker.io (and debootstrap, when the image's root filesystem is not cached) with
# apt-get when they are missing (root only; exits 77 when that is impossible), starts dockerd
# with its own unix socket, pid file and exec root under DIR, no bridge and no iptables rules
# (containers get only `lo`), and makes the image IMAGE once: a minimal Debian bookworm with
# python3 built by debootstrap, loaded with `docker import` (no registry is needed).
#
# Caching, so that later runs start in seconds:
#   - the root filesystem tarball is kept in CACHE/rootfs-HASH.tar (HASH names the recipe);
#   - the engine's data root lives in CACHE/data-root, so the imported image survives, when
#     no other engine uses it (a lock held for the engine's lifetime); otherwise DIR/data-root.
# Prints `export DOCKER_HOST=unix://DIR/docker.sock` on its last line. Stop with docker-down.sh.
#
# Environment:
#   STEADYRUN_DOCKER_CACHE   cache folder (default /var/cache/steadyrun/docker as root,
#                            else ${XDG_CACHE_HOME:-~/.cache}/steadyrun/docker)
#   STEADYRUN_DOCKER_IMAGE   image name (default steadyrun-test-python:bookworm)
set -euo pipefail

DIR=${1:-${STEADYRUN_DOCKER_DIR:-/tmp/steadyrun-docker}}
IMAGE=${STEADYRUN_DOCKER_IMAGE:-steadyrun-test-python:bookworm}
if [ "$(id -u)" = 0 ]; then
    CACHE=${STEADYRUN_DOCKER_CACHE:-/var/cache/steadyrun/docker}
else
    CACHE=${STEADYRUN_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/steadyrun/docker}
fi
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
RECIPE="debootstrap --variant=minbase --include=python3 $SUITE $MIRROR"
HASH=$(printf '%s' "$RECIPE" | sha256sum | cut -c1-16)
ROOTFS_TAR=$CACHE/rootfs-$HASH.tar

need=()
command -v dockerd >/dev/null || need+=(docker.io)
[ -f "$ROOTFS_TAR" ] || command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "docker-up: ${need[*]} not installed and this is not root with apt-get" >&2
        exit 77
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
    }
fi
if [ "$(id -u)" != 0 ]; then
    echo "docker-up: dockerd needs root" >&2
    exit 77
fi

mkdir -p "$DIR" "$CACHE"
chmod 700 "$DIR" "$CACHE"
SOCK=$DIR/docker.sock
# an engine left by an earlier run (same DIR) is stopped first
"$(dirname "$0")/docker-down.sh" "$DIR" >/dev/null 2>&1 || true

# the cached data root serves one engine at a time: the lock is held as long as dockerd runs
exec {lockfd}>"$CACHE/data-root.lock"
if flock -n "$lockfd"; then
    DATA_ROOT=$CACHE/data-root
    shared_root=1
else
    DATA_ROOT=$DIR/data-root
    shared_root=0
fi
mkdir -p "$DATA_ROOT" "$DIR/exec"

# dockerd inherits the lock's descriptor: the lock lasts until the engine exits
start_dockerd() {
    dockerd --data-root "$DATA_ROOT" --exec-root "$DIR/exec" --pidfile "$DIR/dockerd.pid" \
        -H "unix://$SOCK" --bridge=none --iptables=false --ip6tables=false \
        --ip-forward=false --ip-masq=false --storage-driver="$1" --log-level=warn \
        >>"$DIR/dockerd.log" 2>&1 &
    for _ in $(seq 300); do
        docker version >/dev/null 2>&1 && return 0
        kill -0 $! 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
export DOCKER_HOST=unix://$SOCK
# overlay2 where the file system allows it, else vfs (slower, works everywhere)
if ! start_dockerd overlay2; then
    "$(dirname "$0")/docker-down.sh" "$DIR" >/dev/null 2>&1 || true
    if [ "$shared_root" = 0 ]; then mkdir -p "$DATA_ROOT"; fi
    if ! start_dockerd vfs; then
        echo "docker-up: dockerd did not answer on $SOCK; see $DIR/dockerd.log" >&2
        tail -n 20 "$DIR/dockerd.log" >&2 || true
        exit 1
    fi
fi
exec {lockfd}>&-

if [ "$shared_root" = 1 ]; then
    # containers left in the cached data root by a run that died are removed
    leftovers=$(docker ps -aq)
    [ -z "$leftovers" ] || docker rm -f $leftovers >/dev/null 2>&1 || true
fi

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    if [ ! -f "$ROOTFS_TAR" ]; then
        build=$(mktemp -d "$CACHE/rootfs-build.XXXXXX")
        debootstrap --variant=minbase --include=python3 "$SUITE" "$build/rootfs" "$MIRROR" \
            >"$DIR/debootstrap.log" 2>&1 || {
            echo "docker-up: debootstrap failed; see $DIR/debootstrap.log" >&2
            tail -n 20 "$DIR/debootstrap.log" >&2 || true
            rm -rf "$build"
            exit 1
        }
        # smaller image: apt's package cache and lists are not needed to run python3
        rm -rf "$build/rootfs/var/cache/apt/archives"/*.deb "$build/rootfs/var/lib/apt/lists"/*
        tar -C "$build/rootfs" -cf "$build/rootfs.tar" .
        mv "$build/rootfs.tar" "$ROOTFS_TAR"
        rm -rf "$build"
    fi
    docker import --change 'CMD ["python3"]' "$ROOTFS_TAR" "$IMAGE" >/dev/null
fi
echo "export DOCKER_HOST=unix://$SOCK"
