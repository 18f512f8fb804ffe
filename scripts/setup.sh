#!/usr/bin/env bash
# Create .venv (if needed) and install ple-ranker with training, CPU inference and test tools.
# torch is pinned and installed first: a bare `torch` would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[train,cpu,dev]'
