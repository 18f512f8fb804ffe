"""POST /v1/rank's logic: features -> one inference call -> scores -> ranked items.

Per-candidate work goes column by column (service.ranking.candidates in, service.ranking.jsonrows out), so that at
hundreds of candidates the model, not Python, takes most of a request's time.
"""

from __future__ import annotations

import logging
import time
import uuid
import weakref
from typing import Any

import numpy as np
import orjson

from contract import impressions
from contract.features import Encoded, FeatureValueError, usable_or_none
from contract.scoring import Ranking, ScoreOverflow, rank
from service.features.featurelog import FeatureLog
from service.features.store import FeatureStore
from service.lifecycle.registry import ModelVersion, Registry
from service.observability.metrics import Metrics
from service.problems import InvalidInput, TooLarge
from service.ranking import jsonrows
from service.ranking.candidates import VIDEO_LEN, Candidates, raw_features
from service.ranking.itemrows import ItemRows
from service.ranking.shadow import ShadowJob, ShadowScorer
from service.schemas import RankRequest
from service.settings import Settings

log = logging.getLogger("ranker")


class Ranker:
    def __init__(self, registry: Registry, store: FeatureStore, settings: Settings, metrics: Metrics,
                 feature_log: FeatureLog | None = None, shadow: ShadowScorer | None = None):  # fmt: skip
        self.registry, self.store, self.settings, self.metrics = registry, store, settings, metrics
        self.feature_log, self.shadow = feature_log, shadow
        # One item-row cache per loaded version; it goes with the version.
        self._item_rows: weakref.WeakKeyDictionary[ModelVersion, ItemRows] = weakref.WeakKeyDictionary()

    def rank(self, req: RankRequest, stages: dict[str, float] | None = None,
             served: dict[str, ModelVersion] | None = None) -> dict[str, Any]:  # fmt: skip
        """Rank one request. `stages`, when given, receives seconds spent per stage; `served`, the
        version as soon as it is chosen (a later error is that version's too)."""
        t0 = time.perf_counter()
        candidates = self._checked(req)
        mv, bucket = self.registry.resolve(req.model, req.version, req.user.id)
        if served is not None:
            served["version"] = mv
        spec = mv.spec
        weights = self._weights(mv, req.weights)
        transform = req.video_len_transform or spec.scoring.video_len_transform

        fetched = self.store.fetch(req.user.id, candidates.ids)
        t1 = time.perf_counter()
        self.metrics.observe_store(self.store.kind, t1 - t0, fetched.misses)
        if fetched.degraded:
            self.metrics.degraded.labels("feature_store").inc()
        if fetched.corrupt:
            self.metrics.degraded.labels("feature_store_row").inc()
        logged = self.feature_log is not None and self.feature_log.sampled()  # needs the raw values: plain path
        encoded = None
        if self.settings.item_cache_rows and not fetched.degraded and not logged:
            default_len = mv.transform.dense_defaults.get(VIDEO_LEN)
            video_len, lengths_defaulted = candidates.video_len(fetched.items, default_len)
            encoded = self._cached_encoding(mv, req, candidates, fetched.user, fetched.items, video_len)
        if encoded is None:
            shared, per_row, video_len, lengths_defaulted = raw_features(mv.transform, req, candidates, fetched.user,
                                                                         fetched.items)  # fmt: skip
            encoded = self._encoded(mv, req, candidates, shared, per_row)

        t2 = time.perf_counter()
        outputs = mv.engine.run(encoded.as_inputs())
        t3 = time.perf_counter()
        self.metrics.observe_inference(mv, t3 - t2)

        values = {t.name: outputs[t.output] for t in spec.tasks}
        self.metrics.observe_predictions(mv, values)
        try:
            ranking = rank(values, weights, video_len, transform, spec.scoring.eps)
        except ScoreOverflow as exc:
            field = "video_len_transform" if req.video_len_transform else f"candidates[{exc.index}].video_len"
            raise InvalidInput("score_overflow", f"candidates[{exc.index}]: {exc}; choose a length or transform "
                           "parameters that keep f(video_len) below 1e308", field) from None  # fmt: skip
        if self.shadow is not None:
            shadow = self.registry.shadows.pick(mv.name)
            if shadow is not None and shadow is not mv:
                self.shadow.offer(ShadowJob(mv, shadow, req, candidates, fetched.user, fetched.items, values,
                                            ranking.log_score, weights))  # fmt: skip
        request_id = req.request_id
        if logged:
            assert self.feature_log is not None
            request_id = request_id or uuid.uuid4().hex  # the id feedback will name this impression by
            returned = len(candidates.ids) if req.top_k is None else min(req.top_k, len(candidates.ids))
            self.feature_log.offer(impressions.record(request_id, req.user.id, mv.name, mv.version, candidates.ids, shared,
                                                      per_row, values, ranking.order, ranking.log_score, returned))  # fmt: skip
        body = {
            "request_id": request_id,
            "model": mv.name,
            "version": mv.version,
            "bucket": bucket,
            "features_defaulted": encoded.defaulted + lengths_defaulted,
            "degraded": fetched.degraded,
            "items": self._items(candidates.ids, values, ranking, req),
        }
        self.metrics.candidates.observe(len(candidates.ids))
        if stages is not None:
            stages.update(store=t1 - t0, features=t2 - t1, inference=t3 - t2, scoring=time.perf_counter() - t3)
        return body

    @staticmethod
    def _items(ids: list[str], values: dict[str, np.ndarray], ranking: Ranking, req: RankRequest) -> orjson.Fragment:
        """The ranked items, [{"id", "score", "tasks": {...}, "explain"?: {...}}, ...], as a JSON fragment."""
        chosen = ranking.order if req.top_k is None else ranking.order[: req.top_k]
        item: dict = {
            "id": jsonrows.strings(list(map(ids.__getitem__, chosen.tolist()))),
            "score": jsonrows.numbers(np.exp(ranking.log_score[chosen])),
            "tasks": {name: jsonrows.numbers(v[chosen]) for name, v in values.items()},
        }
        if req.explain:
            item["explain"] = {
                "factors": {t: jsonrows.numbers(np.exp(lf[chosen])) for t, lf in ranking.log_factors.items()},
                "f_video_len": jsonrows.numbers(np.exp(ranking.log_f_video_len[chosen])),
                "log_score": jsonrows.numbers(ranking.log_score[chosen]),
            }
        return jsonrows.rows(item)

    def _cached_encoding(self, mv: ModelVersion, req: RankRequest, candidates: Candidates, user: dict | None,
                         items: list, video_len: np.ndarray) -> Encoded | None:  # fmt: skip
        """The inputs from the version's item-row cache; None where the plain path must answer."""
        rows = self._item_rows.get(mv)
        if rows is None:
            rows = self._item_rows.setdefault(mv, ItemRows(mv.transform, self.settings.item_cache_rows))
        got = rows.encode(req, candidates, user, items, video_len)
        if got is None:
            return None
        encoded, lookup = got
        self.metrics.observe_item_rows(lookup.hits, lookup.misses, lookup.cleared)
        return encoded

    def _encoded(self, mv: ModelVersion, req: RankRequest, candidates: Candidates,
                 shared: dict[str, Any], per_row: dict[str, Any]) -> Encoded:  # fmt: skip
        """The model's inputs. A value the client sent that is not a number where one is needed is a
        422 naming it; a broken value from the feature store takes its default (logged, counted)."""
        scrubbed: set[str] = set()
        while True:
            try:
                return mv.transform.encode(len(candidates.ids), shared, per_row)
            except FeatureValueError as exc:
                field = self._sent_field(mv, req, candidates, exc)
                if field is not None:
                    raise InvalidInput("invalid_feature", str(exc), field) from None
                if exc.feature in scrubbed:
                    raise
                log.warning("feature store value not usable (%s); it takes the default", exc)
                self.metrics.degraded.labels("feature_store_value").inc()
                scrubbed.add(exc.feature)
                if exc.feature in per_row:  # the whole column at once: one retry per feature at most
                    per_row[exc.feature] = usable_or_none(exc.feature, per_row[exc.feature])
                else:
                    shared[exc.feature] = None

    @staticmethod
    def _sent_field(mv: ModelVersion, req: RankRequest, candidates: Candidates, exc: FeatureValueError) -> str | None:
        """Where the request sent the failing value; None when it came from the feature store."""
        name = exc.feature
        source = mv.transform.source_of.get(name)
        if source == "user" and name in req.user.features:
            return f"user.features.{name}"
        if source == "context" and name in req.context:
            return f"context.{name}"
        if source == "item" and exc.row is not None and name in candidates.sent_features[exc.row]:
            return f"candidates[{exc.row}].features.{name}"
        return None

    def _checked(self, req: RankRequest) -> Candidates:
        """The request's limits, in the order the errors are reported; then its candidates as columns."""
        limit = self.settings.max_features
        if len(req.candidates) > self.settings.max_candidates:
            raise TooLarge("too_many_candidates",
                           f"{len(req.candidates)} candidates; at most {self.settings.max_candidates}", "candidates")  # fmt: skip
        candidates = Candidates.of(req.candidates)
        candidates.check_ids()
        for field, features in (("user.features", req.user.features), ("context", req.context)):
            if len(features) > limit:
                raise InvalidInput("too_many_features", f"{len(features)} features; at most {limit}", field)
        candidates.check_feature_counts(limit)
        return candidates

    @staticmethod
    def _weights(mv: ModelVersion, override: dict[str, float] | None) -> dict[str, float]:
        weights = dict(mv.spec.scoring.weights)
        known = {t.name for t in mv.spec.tasks}
        for task, w in (override or {}).items():
            if task not in known:
                raise InvalidInput("unknown_task", f"model {mv.name} has no task {task!r}; tasks: {sorted(known)}",
                               f"weights.{task}")  # fmt: skip
            weights[task] = w
        return weights
