#!/usr/bin/env bash
# meson test wrapper: runs kat_auth.py with the test venv's Python (it has
# PyNaCl), comparing against the C dump program given as $1. Exit 77 (skipped)
# with the reason when no such Python exists; tests/run.sh installs it first.
set -euo pipefail
VENV="${PDSERVE_VENV:-${HOME}/.cache/pdserve/venv}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
    echo "skip: no test venv at $VENV (run deploy/install-deps.sh)"
    exit 77
fi
exec "$PY" "$(dirname "$0")/kat_auth.py" check "$1"
