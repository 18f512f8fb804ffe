#!/usr/bin/env bash
# Download the full census and KuaiRand files from their public sources and check every sha256
# (training/data/files.py; docs/data.md). Options: --data-dir DIR (default $RANKER_DATA_DIR, else
# <repo>/../shared/data: where training reads them), --check (download nothing, only compare sums).
# Needs only python3 (the standard library), so it also runs before scripts/setup.sh.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
[ -x "$repo/.venv/bin/python" ] && PYTHON="$repo/.venv/bin/python"
exec "$PYTHON" "$repo/training/data/files.py" "$@"
