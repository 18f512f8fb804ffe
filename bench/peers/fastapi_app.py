"""The FastAPI endpoint both FastAPI peers serve: the service's request model, the shared RankingCore,
a plain `def` route (FastAPI's threadpool) and ORJSONResponse; only the inference call differs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi.responses import ORJSONResponse

from bench.peers.core import RankingCore
from service.problems import Problem
from service.schemas import RankRequest  # the service's wire model: both validate the same way

Infer = Callable[[dict[str, np.ndarray]], list[np.ndarray]]  # {sparse_ids, dense} -> one (B,) array per task


def make_app(core: RankingCore, infer: Infer) -> FastAPI:
    app = FastAPI(default_response_class=ORJSONResponse)

    @app.post("/v1/rank")
    def rank(req: RankRequest) -> ORJSONResponse:
        try:
            inputs, lengths = core.inputs(req)
        except (ValueError, Problem) as exc:
            raise HTTPException(422, str(exc)) from None
        items = core.ranked(req, infer(inputs), lengths)
        return ORJSONResponse({"request_id": req.request_id, "model": core.spec.name, "version": core.spec.version,
                               "items": items})  # fmt: skip

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    return app
