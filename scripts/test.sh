#!/usr/bin/env bash
# Set up a virtual environment with steadyrun and its test tools, then run lint and tests.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
"$PY" -m ruff check src tests bench examples
"$PY" -m mypy
status=0
"$PY" -m pytest "$@" || status=$?
# pytest exits 5 when it collected no test: that is not a failure of the code.
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests"
  status=0
fi
exit "$status"
