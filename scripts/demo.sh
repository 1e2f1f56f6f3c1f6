#!/usr/bin/env bash
# Set up a virtual environment with steadyrun, then run an example experiment on the
# local executor with the embedded SQLite store (no server).
# Usage: bash scripts/demo.sh [examples/NAME.py [args...]]   (default: examples/quickstart.py)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
example="examples/quickstart.py"
if [ $# -gt 0 ] && [[ "$1" == *.py ]]; then
  example="$1"
  shift
fi
exec "$PY" "$example" "$@"
