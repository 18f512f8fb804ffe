"""Peer (a): the endpoint many teams write first: FastAPI + the PLE in PyTorch eager.

Written the way a competent team would: pydantic request models, the project's feature transform
and scoring formula (bench/peers/core.py), `torch.inference_mode()`, a plain `def` endpoint (run in
FastAPI's threadpool), ORJSONResponse. Run with uvicorn's own worker processes:

    PEER_MODEL=models/ple/1 PEER_STATE=bench/.cache/ple-1.pt PEER_FEATURES=data/features \
    PEER_TORCH_THREADS=1 uvicorn bench.peers.fastapi_torch:app --workers 2 --port 8001
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException
from fastapi.responses import ORJSONResponse
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.peers.core import RankingCore  # noqa: E402
from bench.peers.torch_model import load_model  # noqa: E402

torch.set_num_threads(int(os.environ.get("PEER_TORCH_THREADS", "1")))
MODEL_DIR = Path(os.environ.get("PEER_MODEL", "models/ple/1"))
core = RankingCore(MODEL_DIR, Path(os.environ.get("PEER_FEATURES", "data/features")))
model = load_model(MODEL_DIR, Path(os.environ.get("PEER_STATE", "bench/.cache/ple-1.pt")))


class User(BaseModel):
    id: str
    features: dict[str, Any] = {}


class Candidate(BaseModel):
    id: str
    video_len: float | None = None
    features: dict[str, Any] = {}


class RankRequest(BaseModel):
    request_id: str | None = None
    user: User
    context: dict[str, Any] = {}
    candidates: list[Candidate]
    top_k: int | None = None
    weights: dict[str, float] | None = None


app = FastAPI(default_response_class=ORJSONResponse)


@app.post("/v1/rank")
def rank(req: RankRequest) -> ORJSONResponse:
    body = req.model_dump()
    try:
        inputs, lengths = core.inputs(body)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    with torch.inference_mode():
        outputs = model(torch.from_numpy(inputs["sparse_ids"]), torch.from_numpy(inputs["dense"]))
    items = core.ranked(body, [o.numpy() for o in outputs], lengths)
    return ORJSONResponse({"request_id": req.request_id, "model": core.spec.name, "version": core.spec.version,
                           "items": items})  # fmt: skip


@app.get("/health")
def health() -> dict:
    return {"ok": True}
