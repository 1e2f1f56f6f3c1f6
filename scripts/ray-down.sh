#!/usr/bin/env bash
# Stop the Ray head node that scripts/ray-up.sh started in SCRATCH_DIR, and only that one
# (unlike `ray stop`, which ends every Ray process of the machine).
#
#   scripts/ray-down.sh [SCRATCH_DIR]     (default: /tmp/steadyrun-ray)
#
# Its processes are the ones ray-up.sh recorded in SCRATCH_DIR/pids (pid and start time,
# so a reused pid is never signalled), the ones whose command line names SCRATCH_DIR/tmp
# (Ray's --temp-dir; workers started later), and the descendants of both: SIGTERM, then
# SIGKILL after 3 s. Uses the python of the project's environment ($STEADYRUN_VENV,
# default .venv) for psutil, or python3; without psutil it does the same with ps and kill.
# Exits 1 when a process of that head is still alive afterwards.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"

SCRATCH=${1:-${STEADYRUN_RAY_DIR:-/tmp/steadyrun-ray}}
[ -d "$SCRATCH" ] || { echo "ray-down: no $SCRATCH, nothing to stop" >&2; exit 0; }
SCRATCH="$(cd "$SCRATCH" && pwd)"
VENV=${STEADYRUN_VENV:-$root/.venv}
case "$VENV" in /*) ;; *) VENV="$root/$VENV" ;; esac
PY=""
for candidate in "$VENV/bin/python" python3; do
    if "$candidate" -c 'import psutil' 2>/dev/null; then PY=$candidate; break; fi
done
touch "$SCRATCH/pids"

if [ -n "$PY" ]; then
    "$PY" - "$SCRATCH" <<'PYEOF'
import os
import sys

import psutil

scratch = sys.argv[1]
marker = scratch + "/tmp"


def start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def names_marker(p: psutil.Process) -> bool:
    try:
        return any(part == marker or marker + "/" in part or part.endswith("=" + marker)
                   for part in p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


me = {os.getpid(), os.getppid()}
roots = {}
with open(os.path.join(scratch, "pids")) as f:
    for line in f:
        pid, _, ticks = line.strip().partition(" ")
        if pid.isdigit() and int(pid) not in me and start_ticks(int(pid)) == ticks:
            try:
                roots[int(pid)] = psutil.Process(int(pid))
            except psutil.NoSuchProcess:
                pass
for p in psutil.process_iter():
    if p.pid not in me and p.pid not in roots and names_marker(p):
        roots[p.pid] = p
procs = dict(roots)
for p in roots.values():
    try:
        procs.update((c.pid, c) for c in p.children(recursive=True) if c.pid not in me)
    except psutil.NoSuchProcess:
        pass
for p in procs.values():
    try:
        p.terminate()
    except psutil.NoSuchProcess:
        pass
_, alive = psutil.wait_procs(list(procs.values()), timeout=3)
for p in alive:
    try:
        p.kill()
    except psutil.NoSuchProcess:
        pass
_, alive = psutil.wait_procs(alive, timeout=5)
alive = [p for p in alive if _running(p)]  # a zombie is dead; its parent has yet to reap it
print(f"ray-down: stopped {len(procs) - len(alive)} process(es) of the head in {scratch}",
      file=sys.stderr)
if alive:
    print(f"ray-down: still alive: {sorted(p.pid for p in alive)}", file=sys.stderr)
    sys.exit(1)
PYEOF
    status=$?
else
    echo "ray-down: no python with psutil ($VENV/bin/python, python3); using ps" >&2
    status=0
    roots=" "
    while read -r pid ticks; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        set -- ${stat##*) }
        [ "${20}" = "$ticks" ] && roots+="$pid "
    done < "$SCRATCH/pids"
    table=$(ps -eo pid=,ppid=,args=)
    while read -r pid ppid args; do
        case " $args " in *"$SCRATCH/tmp/"* | *"$SCRATCH/tmp "*) roots+="$pid " ;; esac
    done <<< "$table"
    roots=${roots// $$ / }
    # add descendants until the set stops growing
    procs=$roots
    grew=1
    while [ -n "$grew" ]; do
        grew=""
        while read -r pid ppid args; do
            if [[ "$procs" == *" $ppid "* && "$procs" != *" $pid "* ]]; then
                procs+="$pid "
                grew=1
            fi
        done <<< "$table"
    done
    read -ra pids <<< "$procs"
    if [ ${#pids[@]} -gt 0 ]; then
        kill "${pids[@]}" 2>/dev/null
        for _ in $(seq 30); do
            live=$(ps -o stat= -p "$(IFS=,; echo "${pids[*]}")" 2>/dev/null | grep -vc '^Z')
            [ "$live" -eq 0 ] && break
            sleep 0.1
        done
        kill -9 "${pids[@]}" 2>/dev/null
        sleep 0.3
        live=$(ps -o stat= -p "$(IFS=,; echo "${pids[*]}")" 2>/dev/null | grep -vc '^Z')
        [ "$live" -eq 0 ] || status=1
    fi
    echo "ray-down: stopped ${#pids[@]} process(es) of the head in $SCRATCH" >&2
fi
if [ "$status" -eq 0 ]; then
    rm -rf "$SCRATCH/tmp" "$SCRATCH/address" "$SCRATCH/pids"
fi
exit "$status"
