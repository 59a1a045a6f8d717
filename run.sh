#!/usr/bin/env bash
# The project's set-up commands. `./run.sh test` is what CI runs (.ci/run); see README.md.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

setup() {
  # A private virtual environment with the project and its test tools; torch comes from this machine's disk.
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  # Re-install only when pyproject.toml changed since the last successful install.
  stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1
    "$VENV/bin/python" -m pip install --quiet -e '.[dev]' 2>"$VENV/install.log" \
      || { cat "$VENV/install.log" >&2; echo "set-up failed: pip install" >&2; exit 1; }
    rm -f "$VENV"/.installed-* && touch "$stamp"
  fi
  "$VENV/bin/python" -c "import torch, torchvision, onnxruntime, personsearch" \
    || { echo "set-up failed: the project's packages do not import" >&2; exit 1; }
}

case "${1:-}" in
  setup)
    setup
    ;;
  test)
    shift
    setup
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/mypy"
    exec "$VENV/bin/pytest" -q "$@"
    ;;
  *)
    echo "usage: ./run.sh setup | test [pytest args]" >&2
    exit 2
    ;;
esac
