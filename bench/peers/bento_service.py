"""Peer (b): BentoML serving the same model.onnx with ONNX Runtime.

BentoML 1.4's service API: one class, `@bentoml.service` for its settings, `@bentoml.api` for the
endpoint (JSON fields become the method's arguments). The project's feature transform and scoring
formula come from bench/peers/core.py. Settings for 2 cores, per BentoML's docs for CPU-bound
models: `workers=2` (one process per core), ONNX Runtime with one intra-op thread per worker.

    PEER_MODEL=models/ple/1 PEER_FEATURES=data/features \
    bench/.venvs/bentoml/bin/bentoml serve bench.peers.bento_service:PLERanker --port 8002
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import bentoml
import onnxruntime as ort

# bentoml serve loads this file in its own venv, where the repository (contract, bench.peers) is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.peers.core import RankingCore  # noqa: E402
from service.schemas import RankRequest  # noqa: E402

WORKERS = int(os.environ.get("PEER_WORKERS", "2"))
THREADS = int(os.environ.get("PEER_ORT_THREADS", "1"))


@bentoml.service(workers=WORKERS, traffic={"timeout": 30})
class PLERanker:
    def __init__(self) -> None:
        model_dir = Path(os.environ.get("PEER_MODEL", "models/ple/1"))
        self.core = RankingCore(model_dir, Path(os.environ.get("PEER_FEATURES", "data/features")))
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])

    @bentoml.api(route="/v1/rank")
    def rank(
        self,
        user: dict[str, Any],
        candidates: list[dict[str, Any]],
        context: dict[str, Any] | None = None,
        top_k: int | None = None,
        weights: dict[str, float] | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        req = RankRequest.model_validate({"user": user, "candidates": candidates, "context": context or {},
                                          "top_k": top_k, "weights": weights})  # fmt: skip
        inputs, lengths = self.core.inputs(req)
        outputs = self.session.run(self.core.outputs, inputs)
        items = self.core.ranked(req, outputs, lengths)
        return {"request_id": request_id, "model": self.core.spec.name, "version": self.core.spec.version, "items": items}
