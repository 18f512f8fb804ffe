#!/usr/bin/env bash
# Virtual environments for the peer servers and the training reference, apart from the project's
# .venv (git-ignored: bench/.venvs/). torch is pinned and installed first wherever it is needed:
# a bare `torch` would pull a multi-GB CUDA build. TorchServe also needs Java (OpenJDK 17).
#
#   bash bench/setup_peers.sh                 # all of them
#   bash bench/setup_peers.sh rechub          # only the ones named (bentoml, torchserve, rechub)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
make_venv() { [ -x ".venvs/$1/bin/python" ] || "$PYTHON" -m venv ".venvs/$1"; }

bentoml() {
  make_venv bentoml
  # bentoml 1.4.40 asks for a certifi newer than the registry here has; 1.4.39 is the newest that installs.
  .venvs/bentoml/bin/pip install -q "bentoml==1.4.39" onnxruntime numpy orjson
}

torchserve() {
  make_venv torchserve
  .venvs/torchserve/bin/pip install -q torch==2.13.0
  .venvs/torchserve/bin/pip install -q torchserve==0.12.0 torch-model-archiver==0.12.0 numpy pydantic pyyaml  # ts imports yaml without declaring it
}

rechub() {
  make_venv rechub
  .venvs/rechub/bin/pip install -q torch==2.13.0
  .venvs/rechub/bin/pip install -q torch-rechub==0.9.0 scikit-learn
}

for peer in "${@:-bentoml torchserve rechub}"; do
  for name in $peer; do
    case "$name" in
      bentoml | torchserve | rechub) "$name" ;;
      *) echo "unknown peer $name (bentoml, torchserve, rechub)" >&2; exit 2 ;;
    esac
  done
done
