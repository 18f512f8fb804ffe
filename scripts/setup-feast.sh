#!/usr/bin/env bash
# Create .venv-feast (if needed): the serving install with the feast extra, for
# RANKER_FEATURE_STORE=feast and its tests (tests/test_feast.py). Its own environment because feast
# pins pandas<3 and prometheus-client<0.25, older than the training extra and the serving lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv-feast/bin/python ]; then
  "$PYTHON" -m venv .venv-feast
fi
.venv-feast/bin/python -m pip install -q --upgrade pip
.venv-feast/bin/python -m pip install -q -e '.[cpu,feast]'
