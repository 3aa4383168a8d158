#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install the project; extra arguments are pip extras, e.g. "test".
# Installed once per pyproject.toml: a later run with the same file and extras installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
extras="${1:-}"
hash="$(sha256sum pyproject.toml | cut -c1-16)"
stamp=".venv/.installed-${hash}-${extras:-base}"
if [ -f "$stamp" ]; then
  exit 0
fi
# The project without extras is part of any install with extras.
if [ -z "$extras" ] && compgen -G ".venv/.installed-${hash}-*" >/dev/null; then
  exit 0
fi
# -qq: errors only (pip's notes about index locations and setuptools' editable-install notice
# are not a newcomer's concern).
.venv/bin/python -m pip install -qq --upgrade pip
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -qq -e ".[${extras}]"
else
  .venv/bin/python -m pip install -qq -e .
fi
touch "$stamp"
