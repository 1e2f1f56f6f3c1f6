#!/usr/bin/env bash
# Set up a virtual environment with steadyrun, then run the example experiment on the
# local executor with the embedded SQLite store (no server).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
exec "$PY" examples/quickstart.py "$@"
