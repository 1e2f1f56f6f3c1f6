# Sourced by the scripts: make the project's virtual environment (Python 3.11+) with
# steadyrun installed from this checkout (editable) and the extra the script needs; set $PY.
#
#   VENV_EXTRA=dev source scripts/_venv.sh     (dev, the default: tests, lint, docs, all
#                                               backends; "" : the base dependencies only;
#                                               or any extra of pyproject.toml)
#
# The environment is $STEADYRUN_VENV (default .venv). One that already has a larger set
# is reused as it is: the dev extra holds every other one, `examples` holds the base.
VENV="${STEADYRUN_VENV:-.venv}"
extra="${VENV_EXTRA-dev}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
hash="$(sha256sum pyproject.toml | cut -c1-16)"
stamp="$VENV/.installed-${extra:-base}-$hash"
case "${extra:-base}" in
  dev) enough=(dev) ;;
  base) enough=(base examples ray dev) ;;
  *) enough=("$extra" dev) ;;
esac
installed=""
for have in "${enough[@]}"; do
  [ -f "$VENV/.installed-$have-$hash" ] && installed=1
done
if [ -z "$installed" ]; then
  echo "setting up $VENV: steadyrun${extra:+[$extra]} from this checkout (once)" >&2
  # the dev set is large and resolves best with a current pip; the others need only
  # what `python -m venv` brings (editable installs from pyproject.toml: pip >= 21.3)
  if [ "$extra" = dev ]; then
    "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
  fi
  "$PY" -m pip install --quiet --disable-pip-version-check -e ".${extra:+[$extra]}"
  touch "$stamp"
fi
unset extra hash stamp enough have installed
export PY
