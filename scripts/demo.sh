#!/usr/bin/env bash
# Quick start 1: set up, then run the demo (train or load a model, decompose, sample, compose,
# write figures and metrics to demo-out/). Extra arguments go to `econ demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/econ demo "$@"
