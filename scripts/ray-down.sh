#!/usr/bin/env bash
# Stop the Ray head node that scripts/ray-up.sh started in SCRATCH_DIR, and only that one
# (unlike `ray stop`, which ends every Ray process of the machine): its processes are the
# ones whose command line names SCRATCH_DIR/tmp (Ray's --temp-dir), and their descendants.
#
#   scripts/ray-down.sh [SCRATCH_DIR]     (default: /tmp/steadyrun-ray)
set -euo pipefail

SCRATCH=${1:-${STEADYRUN_RAY_DIR:-/tmp/steadyrun-ray}}
[ -d "$SCRATCH" ] || { echo "ray-down: no $SCRATCH" >&2; exit 0; }
PY=${PY:-python3}
"$PY" - "$SCRATCH" <<'PYEOF'
import sys, time
import psutil
import os
marker = sys.argv[1].rstrip("/") + "/tmp/"  # Ray's --temp-dir: only its processes name it
me = {os.getpid(), os.getppid()}
roots = [p for p in psutil.process_iter(["cmdline"])
         if p.pid not in me and any(marker in part for part in p.info["cmdline"] or ())]
procs = set(roots)
for p in roots:
    try:
        procs.update(p.children(recursive=True))
    except psutil.NoSuchProcess:
        pass
for p in procs:
    try:
        p.terminate()
    except psutil.NoSuchProcess:
        pass
gone, alive = psutil.wait_procs(list(procs), timeout=3)
for p in alive:
    try:
        p.kill()
    except psutil.NoSuchProcess:
        pass
print(f"ray-down: stopped {len(procs)} process(es) of {sys.argv[1]}", file=sys.stderr)
PYEOF
rm -rf "$SCRATCH/tmp" "$SCRATCH/address"
