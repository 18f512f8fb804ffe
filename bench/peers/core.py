"""The ranking logic every peer server shares: feature tables, raw features, scores.

A team serving this model in another stack would still use the project's feature transform (the
one contract between training and serving, contract/features.py) and the scoring formula
(contract/scoring.py); what differs between peers is only the server and the inference engine.
Raw features are assembled by the service's own code (service.ranking.candidates), which needs
NumPy and pydantic only (no redis, no FastAPI, no onnxruntime), so this module imports in every
peer's own virtual environment with the repository root on sys.path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from contract.features import FeatureTransform
from contract.modelspec import ModelSpec
from contract.scoring import rank
from service.ranking.candidates import Candidates, raw_features
from service.schemas import RankRequest


def read_jsonl(path: Path) -> dict[str, dict]:
    table = {}
    if path.is_file():
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    table[str(row["id"])] = row["features"]
    return table


class RankingCore:
    """Everything but inference: a request (the service's own wire model, service.schemas.RankRequest,
    validated once by the peer's framework) -> model inputs; model outputs -> ranked items."""

    def __init__(self, version_dir: Path, features_dir: Path):
        self.spec = ModelSpec.model_validate_json((Path(version_dir) / "model.json").read_bytes())
        self.transform = FeatureTransform(self.spec.features)
        self.users = read_jsonl(Path(features_dir) / "users.jsonl")
        self.items = read_jsonl(Path(features_dir) / "items.jsonl")
        self.id_features = {s.name for s in self.spec.features if s.from_id}
        self.tasks = [t.name for t in self.spec.tasks]
        self.outputs = [t.output for t in self.spec.tasks]

    def inputs(self, request: RankRequest) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """A request -> ({sparse_ids, dense}, video lengths), by the service's own assembly
        (service/ranking/candidates.py): the same precedence and video_len rules."""
        candidates = Candidates.of(request.candidates)
        stored = [self.items.get(cid) for cid in candidates.ids]
        shared, per_row, lengths, _ = raw_features(self.transform, request, candidates, self.users.get(request.user.id),
                                                   stored)  # fmt: skip
        return self.transform.encode(len(candidates.ids), shared, per_row).as_inputs(), lengths

    def ranked(self, request: RankRequest, outputs: list[np.ndarray], lengths: np.ndarray) -> list[dict]:
        """Per-task outputs (one (B,) array per task, in model.json's order) -> items, best first."""
        values = dict(zip(self.tasks, outputs))
        weights = {**self.spec.scoring.weights, **(request.weights or {})}
        ranking = rank(values, weights, lengths, self.spec.scoring.video_len_transform, self.spec.scoring.eps)
        top_k = request.top_k
        chosen = ranking.order if top_k is None else ranking.order[:top_k]
        scores = np.exp(ranking.log_score[chosen]).tolist()
        columns = [v[chosen].tolist() for v in values.values()]
        ids = [c["id"] for c in request.candidates]
        return [{"id": ids[i], "score": s, "tasks": dict(zip(self.tasks, row))}
                for i, s, *row in zip(chosen.tolist(), scores, *columns)]  # fmt: skip
