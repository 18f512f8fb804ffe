"""POST /v1/rank's logic: features -> one inference call -> scores -> ranked items."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from service.errors import ApiError
from service.features import FeatureValueError
from service.metrics import Metrics
from service.registry import ModelVersion, Registry
from service.schemas import RankRequest
from service.scoring import rank
from service.settings import Settings
from service.store import FeatureStore

VIDEO_LEN = "video_len"


class Ranker:
    def __init__(self, registry: Registry, store: FeatureStore, settings: Settings, metrics: Metrics):
        self.registry, self.store, self.settings, self.metrics = registry, store, settings, metrics

    def rank(self, req: RankRequest, stages: dict[str, float] | None = None) -> dict[str, Any]:
        """Rank one request. `stages`, when given, receives seconds spent per stage."""
        t0 = time.perf_counter()
        self._check_limits(req)
        mv, bucket = self.registry.resolve(req.model, req.version, req.user.id)
        spec = mv.spec
        weights = self._weights(mv, req.weights)
        transform = req.video_len_transform or spec.scoring.video_len_transform

        ids = [c.id for c in req.candidates]
        fetched = self.store.fetch(req.user.id, ids)
        t1 = time.perf_counter()
        self.metrics.observe_store(self.store.kind, t1 - t0, fetched.misses)
        if fetched.degraded:
            self.metrics.degraded.labels("feature_store").inc()
        shared, per_row, video_len = self._raw_features(mv, req, fetched)
        try:
            encoded = mv.transform.encode(len(ids), shared, per_row)
        except FeatureValueError as exc:
            raise ApiError(422, "invalid_feature", str(exc), exc.feature) from None

        t2 = time.perf_counter()
        outputs = mv.engine.run(encoded.as_inputs())
        t3 = time.perf_counter()
        self.metrics.observe_inference(mv, t3 - t2)

        values = {t.name: outputs[t.output] for t in spec.tasks}
        ranking = rank(values, weights, video_len, transform, spec.scoring.eps)
        body = {
            "request_id": req.request_id,
            "model": mv.name,
            "version": mv.version,
            "bucket": bucket,
            "features_defaulted": encoded.defaulted,
            "degraded": fetched.degraded,
            "items": self._items(ids, values, ranking, req),
        }
        self.metrics.candidates.observe(len(ids))
        if stages is not None:
            stages.update(store=t1 - t0, features=t2 - t1, inference=t3 - t2, scoring=time.perf_counter() - t3)
        return body

    @staticmethod
    def _items(ids: list[str], values: dict[str, np.ndarray], ranking, req: RankRequest) -> list[dict]:
        chosen = ranking.order if req.top_k is None else ranking.order[: req.top_k]
        scores = np.exp(ranking.log_score[chosen]).tolist()
        columns = {name: v[chosen].tolist() for name, v in values.items()}
        names = list(columns)
        rows = zip(*columns.values())
        items = [{"id": ids[i], "score": s, "tasks": dict(zip(names, row))}
                 for i, s, row in zip(chosen.tolist(), scores, rows)]  # fmt: skip
        if req.explain:
            factors = {t: np.exp(lf[chosen]).tolist() for t, lf in ranking.log_factors.items()}
            f_len = np.exp(ranking.log_f_video_len[chosen]).tolist()
            for j, item in enumerate(items):
                item["explain"] = {"factors": {t: f[j] for t, f in factors.items()}, "f_video_len": f_len[j]}
        return items

    def _check_limits(self, req: RankRequest) -> None:
        limit = self.settings.max_features
        if len(req.candidates) > self.settings.max_candidates:
            raise ApiError(413, "too_many_candidates",
                           f"{len(req.candidates)} candidates; at most {self.settings.max_candidates}", "candidates")  # fmt: skip
        seen: set[str] = set()
        for i, c in enumerate(req.candidates):
            if c.id in seen:
                raise ApiError(422, "duplicate_candidate", f"candidate id {c.id!r} appears twice", f"candidates[{i}].id")
            seen.add(c.id)
        for field, features in (("user.features", req.user.features), ("context", req.context)):
            if len(features) > limit:
                raise ApiError(422, "too_many_features", f"{len(features)} features; at most {limit}", field)
        for i, c in enumerate(req.candidates):
            if len(c.features) > limit:
                raise ApiError(422, "too_many_features", f"{len(c.features)} features; at most {limit}",
                               f"candidates[{i}].features")  # fmt: skip

    @staticmethod
    def _weights(mv: ModelVersion, override: dict[str, float] | None) -> dict[str, float]:
        weights = dict(mv.spec.scoring.weights)
        known = {t.name for t in mv.spec.tasks}
        for task, w in (override or {}).items():
            if task not in known:
                raise ApiError(422, "unknown_task", f"model {mv.name} has no task {task!r}; tasks: {sorted(known)}",
                               f"weights.{task}")  # fmt: skip
            weights[task] = w
        return weights

    @staticmethod
    def _raw_features(mv: ModelVersion, req: RankRequest, fetched) -> tuple[dict, dict, np.ndarray]:
        """Shared (user + context) and per-candidate raw values; the request wins over the store."""
        by_source = mv.transform.by_source
        id_features = mv.transform.from_id
        stored_user = fetched.user or {}
        shared: dict[str, Any] = {}
        for name in by_source["user"]:
            shared[name] = req.user.id if name in id_features else req.user.features.get(name, stored_user.get(name))
        for name in by_source["context"]:
            shared[name] = req.context.get(name)

        stored_items = [s or {} for s in fetched.items]
        lengths = []
        for i, (c, stored) in enumerate(zip(req.candidates, stored_items)):
            length = c.video_len if c.video_len is not None else stored.get(VIDEO_LEN)
            if not isinstance(length, (int, float)) or not (0 < length < math.inf):
                raise ApiError(422, "missing_video_len",
                               "video_len (seconds, > 0) is required when the store does not know the item",
                               f"candidates[{i}].video_len")  # fmt: skip
            lengths.append(float(length))
        per_row: dict[str, list] = {}
        for name in by_source["item"]:
            if name in id_features:
                per_row[name] = [c.id for c in req.candidates]
            elif name == VIDEO_LEN:
                per_row[name] = lengths
            else:
                per_row[name] = [c.features.get(name, s.get(name)) for c, s in zip(req.candidates, stored_items)]
        return shared, per_row, np.asarray(lengths)
