#!/usr/bin/env bash
# Create .venv (if needed) and install torch 2.13 (CPU build) first, then econ-scenes with its
# extras. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
if ! .venv/bin/python -c "import econ_scenes, optuna, pytest, ruff" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.econ-installed ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check -e ".[dev,sweep]"
  touch .venv/.econ-installed
fi
