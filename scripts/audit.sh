#!/usr/bin/env bash
# Known vulnerabilities in the serving image's dependencies (pip-audit, PyPI's advisory data).
#   bash scripts/audit.sh            audit requirements/serve.lock (needs .venv: scripts/setup.sh)
#   bash scripts/audit.sh --relock   first rebuild the lock from a fresh serve-only venv ([cpu] extra,
#                                    no torch, no training or test tools), then audit it
# Exit status: 0 no known vulnerability, 1 some found (pip-audit lists them), other: could not run
# (e.g. pypi.org unreachable).
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=requirements/serve.lock
if [ "${1:-}" = "--relock" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m venv "$tmp/venv"
  "$tmp/venv/bin/python" -m pip install -q --upgrade pip
  "$tmp/venv/bin/python" -m pip install -q '.[cpu]'
  {
    echo "# The serving dependencies, pinned: pip freeze of a fresh venv with '.[cpu]' installed"
    echo "# (what the CPU image installs; the GPU image has onnxruntime-gpu instead of onnxruntime)."
    echo "# Rebuild and audit: bash scripts/audit.sh --relock"
    "$tmp/venv/bin/python" -m pip freeze --all --exclude ple-ranker | grep -v '^pip=='
  } > "$LOCK"
  echo "wrote $LOCK ($(grep -vc '^#' "$LOCK") packages)"
fi
# --no-deps --disable-pip: the lock is complete and pinned, nothing is resolved or installed.
# Extra pip-audit flags pass through: AUDIT_FLAGS="--vulnerability-service osv" bash scripts/audit.sh
set +e
out=$(.venv/bin/pip-audit --requirement "$LOCK" --no-deps --disable-pip --progress-spinner off ${AUDIT_FLAGS:-} 2>&1)
rc=$?
set -e
echo "$out"
# pip-audit reports a package it could not look up as a warning and still exits 0: an audit that
# checked nothing must not read as a clean one.
if grep -q "could not be audited" <<<"$out"; then
  echo "audit INCOMPLETE: the vulnerability service was not reachable for the packages above" >&2
  exit 2
fi
exit $rc
