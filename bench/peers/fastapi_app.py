"""The FastAPI endpoint both FastAPI peers serve: pydantic request models, the shared RankingCore,
a plain `def` route (FastAPI's threadpool) and ORJSONResponse; only the inference call differs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi.responses import ORJSONResponse
from pydantic import BaseModel

from bench.peers.core import RankingCore
from service.problems import Problem

Infer = Callable[[dict[str, np.ndarray]], list[np.ndarray]]  # {sparse_ids, dense} -> one (B,) array per task


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


def make_app(core: RankingCore, infer: Infer) -> FastAPI:
    app = FastAPI(default_response_class=ORJSONResponse)

    @app.post("/v1/rank")
    def rank(req: RankRequest) -> ORJSONResponse:
        body = req.model_dump()
        try:
            inputs, lengths = core.inputs(body)
        except (ValueError, Problem) as exc:
            raise HTTPException(422, str(exc)) from None
        items = core.ranked(body, infer(inputs), lengths)
        return ORJSONResponse({"request_id": req.request_id, "model": core.spec.name, "version": core.spec.version,
                               "items": items})  # fmt: skip

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    return app
