#!/usr/bin/env bash
# Set up and run the whole test suite (Redis at 127.0.0.1:6379 is started if it does not answer).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-feast.sh
. .venv/bin/activate
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if command -v redis-server >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
    for _ in $(seq 1 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
  else
    echo "warning: redis-server not installed; Redis tests will fail" >&2
  fi
fi
python -m pytest -q "$@"
