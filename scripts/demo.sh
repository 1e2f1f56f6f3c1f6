#!/usr/bin/env bash
# Set up the project's virtual environment with what an example needs, then run the example
# on the local executor with the embedded SQLite store (no server).
# Usage: bash scripts/demo.sh [examples/NAME.py [args...]]   (default: examples/quickstart.py)
#
# The base dependencies are enough for quickstart.py; train_mlp.py and mlp.py add the
# `examples` extra (PyTorch), ray_sweep.py the `ray` extra. An environment that already has
# them (the dev one that scripts/test.sh makes, say) is used as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
example="examples/quickstart.py"
if [ $# -gt 0 ] && [[ "$1" == *.py ]]; then
  example="$1"
  shift
fi
case "$(basename "$example")" in
  train_mlp.py | mlp.py) VENV_EXTRA=examples ;;
  ray_sweep.py) VENV_EXTRA=ray ;;
  *) VENV_EXTRA="" ;;
esac
source scripts/_venv.sh
status=0
"$PY" "$example" "$@" || status=$?
bin="$(cd "$(dirname "$PY")" && pwd)"
echo >&2
echo "The steadyrun command is in $bin. Put it on PATH with" >&2
echo "    source ${bin%/bin}/bin/activate" >&2
echo "then try: steadyrun list; steadyrun status ID; steadyrun --help" >&2
exit "$status"
