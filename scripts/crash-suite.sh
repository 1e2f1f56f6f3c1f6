#!/usr/bin/env bash
# Run the crash suite (`pytest -m crash`) N times in a row (default 20), each run with a
# fresh $STEADYRUN_HOME; stop at the first failing run and say how many passed.
# Usage: bash scripts/crash-suite.sh [N] [pytest args...]
#   bash scripts/crash-suite.sh 5 tests/test_crash_random.py -x
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
[ $# -gt 0 ] && shift
if ! [[ "$runs" =~ ^[0-9]+$ ]] || [ "$runs" -lt 1 ]; then
  echo "usage: bash scripts/crash-suite.sh [N] [pytest args...]  (N: a whole number >= 1)" >&2
  exit 2
fi
if [ -x "${STEADYRUN_VENV:-.venv}/bin/python" ]; then
  PY="${STEADYRUN_VENV:-.venv}/bin/python"
else
  source scripts/_venv.sh
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
passed=0
for i in $(seq 1 "$runs"); do
  export STEADYRUN_HOME="$scratch/home-$i"
  start=$SECONDS
  if "$PY" -m pytest -m crash -q -p no:cacheprovider "$@"; then
    passed=$((passed + 1))
    echo "crash suite: run $i/$runs passed in $((SECONDS - start))s ($passed clean in a row)"
  else
    echo "crash suite: run $i/$runs FAILED after $((SECONDS - start))s;" \
         "$passed clean run(s) in a row before it"
    exit 1
  fi
done
echo "crash suite: $passed/$runs clean runs in a row"
