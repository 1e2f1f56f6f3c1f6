#!/usr/bin/env bash
# Set up a virtual environment with steadyrun and its test tools, then run lint, type
# checks, the documentation build and the tests.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
"$PY" -m ruff check src tests bench examples
"$PY" -m mypy
# the documentation site: every page and API reference builds without a warning
site="$(mktemp -d)"
NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict --quiet -d "$site/site"
rm -rf "$site"
status=0
"$PY" -m pytest "$@" || status=$?
# pytest exits 5 when it collected no test: that is not a failure of the code.
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests"
  status=0
fi
exit "$status"
