"""Peer (e): the plain two-process server of our own pieces: FastAPI + ONNX Runtime, the same
RankingCore and model.onnx as ple-ranker, `uvicorn --workers 2` with a one-thread ORT session per
worker (a process per core, the layout issue #20's outside run found ahead of ours). Run from the
repository root:

    PEER_MODEL=models/ple/1 PEER_FEATURES=data/features uvicorn bench.peers.fastapi_ort:app --workers 2 --port 8001
"""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from bench.peers.core import RankingCore
from bench.peers.fastapi_app import make_app

MODEL_DIR = Path(os.environ.get("PEER_MODEL", "models/ple/1"))
options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("PEER_ORT_THREADS", "1"))
options.inter_op_num_threads = 1
session = ort.InferenceSession(str(MODEL_DIR / "model.onnx"), options, providers=["CPUExecutionProvider"])
core = RankingCore(MODEL_DIR, Path(os.environ.get("PEER_FEATURES", "data/features")))


def infer(inputs):
    return session.run(core.outputs, inputs)


app = make_app(core, infer)
