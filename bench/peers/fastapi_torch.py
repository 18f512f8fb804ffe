"""Peer (a): the endpoint many teams write first: FastAPI + the PLE in PyTorch eager.

Written the way a competent team would: pydantic request models, the project's feature transform
and scoring formula (bench/peers/core.py), `torch.inference_mode()`, a plain `def` endpoint (run in
FastAPI's threadpool), ORJSONResponse (bench/peers/fastapi_app.py). Run with uvicorn's own worker
processes, from the repository root:

    PEER_MODEL=models/ple/1 PEER_STATE=bench/.cache/ple-1.pt PEER_FEATURES=data/features \
    PEER_TORCH_THREADS=1 uvicorn bench.peers.fastapi_torch:app --workers 2 --port 8001
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bench.peers.core import RankingCore
from bench.peers.fastapi_app import make_app
from bench.peers.torch_model import load_model

torch.set_num_threads(int(os.environ.get("PEER_TORCH_THREADS", "1")))
MODEL_DIR = Path(os.environ.get("PEER_MODEL", "models/ple/1"))
model = load_model(MODEL_DIR, Path(os.environ.get("PEER_STATE", "bench/.cache/ple-1.pt")))


def infer(inputs):
    with torch.inference_mode():
        outputs = model(torch.from_numpy(inputs["sparse_ids"]), torch.from_numpy(inputs["dense"]))
    return [o.numpy() for o in outputs]


app = make_app(RankingCore(MODEL_DIR, Path(os.environ.get("PEER_FEATURES", "data/features"))), infer)
