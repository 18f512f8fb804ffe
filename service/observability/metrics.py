"""Prometheus metrics, declared once per app on a registry of its own (fresh in every test).

With several worker processes (RANKER_WORKERS > 1) prometheus-client runs in its multiprocess
mode: ranker-serve points PROMETHEUS_MULTIPROC_DIR at an empty folder before the workers start,
each worker writes its values to files there, and `Metrics.exposition` (what /metrics and the
dashboard read) sums every worker's files, so whichever worker answers a scrape shows the whole
container. Gauges say how they combine: requests in flight add up over the live workers; the
routing gauges, which every worker sets alike, show the most recent value.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.routing import BaseRoute, Match

if TYPE_CHECKING:
    from service.lifecycle.registry import ModelVersion

# Fine enough to read p99 from 0.25 ms to 1 s: neighbouring bounds differ by at most 1.5x (2x in
# the first bucket), so histogram_quantile's interpolation error stays within one such step.
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
)  # fmt: skip
# Load + check + warm-up of a version: tens of milliseconds for a small model, seconds on a GPU.
LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CANDIDATE_BUCKETS = (1, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 4000)
# Shadow comparisons: agreement near 1 is what matters, so the top buckets are fine. No bound below
# 0 (a negative correlation counts in le="0.0"): prometheus-client drops _sum when one is, and _sum
# / _count is the mean the dashboard shows.
OVERLAP_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
CORRELATION_BUCKETS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999, 1.0)
DIFFERENCE_BUCKETS = (0.0001, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def multiprocess_dir() -> str | None:
    """The folder shared by the worker processes' metric files, when there are several."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # What a scrape reads: this process's registry, or every worker's files summed.
        self.exposition = r
        if multiprocess_dir():
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition)
        self.requests = Histogram("ranker_request_duration_seconds", "HTTP request latency",
                                  ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.inference = Histogram("ranker_inference_duration_seconds", "ONNX Runtime time per call",
                                   ["model", "version", "provider"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.candidates = Histogram("ranker_candidates_per_request", "candidates per rank request",
                                    buckets=CANDIDATE_BUCKETS, registry=r)  # fmt: skip
        self.store_latency = Histogram("ranker_feature_store_duration_seconds", "feature fetch per request",
                                       ["store"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.store_misses = Counter("ranker_feature_store_misses_total", "ids the feature store did not know",
                                    ["store"], registry=r)  # fmt: skip
        self.errors = Counter("ranker_errors_total", "error responses by kind", ["kind"], registry=r)
        # Serving-time feature log (service.features.featurelog): "written" to the stream, or dropped:
        # "queue_full" (Redis slower than the sampled traffic), "redis_error" (the write failed).
        self.feature_log = Counter("ranker_feature_log_records_total", "sampled feature log records by outcome",
                                   ["outcome"], registry=r)  # fmt: skip
        self.model_loads = Counter("ranker_model_loads_total", "model version loads", ["model", "result"], registry=r)
        self.model_load_seconds = Histogram("ranker_model_load_duration_seconds", "load + check + warm-up time",
                                            ["model"], buckets=LOAD_BUCKETS, registry=r)  # fmt: skip
        # The watcher's view of the repository: "unreadable" (each failed scan), "version_vanished"
        # (a loaded version's folder deleted; it keeps serving from memory).
        self.repository_events = Counter("ranker_repository_events_total",
                                         "model repository problems seen by the watcher", ["event"], registry=r)
        # The control plane's view: garbage in its keys or channel ("corrupt_state", "corrupt_history",
        # "bad_message"), its listener restarted ("listener_error"), keys lost and put back ("keys_restored").
        self.control_events = Counter("ranker_control_events_total", "control plane problems seen and handled",
                                      ["event"], registry=r)  # fmt: skip
        # Versions whose interface (contract.modelspec.Interface) differs from the serving version's,
        # counted when loaded or passed over at start-up: the watcher never routes to them; an admin
        # may, with allow_interface_change.
        self.incompatible_versions = Counter("ranker_incompatible_versions_total",
                                             "versions loaded or passed over with another interface than the serving one",
                                             ["model"], registry=r)  # fmt: skip
        self.model_swaps = Counter("ranker_model_swaps_total", "changes of the serving version or split",
                                   ["model"], registry=r)  # fmt: skip
        self.traffic_share = Gauge("ranker_model_traffic_share", "share of users routed to a version",
                                   ["model", "version"], registry=r, multiprocess_mode="mostrecent")  # fmt: skip
        self.degraded = Counter("ranker_degraded_requests_total",
                                "requests answered with a fallback (e.g. features defaulted because Redis failed)",
                                ["reason"], registry=r)  # fmt: skip
        self.active_version = Gauge("ranker_model_active_version", "version serving by default", ["model"],
                                    registry=r, multiprocess_mode="mostrecent")  # fmt: skip
        # Saturation: requests being handled right now (queueing shows here before it shows in p99).
        self.in_flight = Gauge("ranker_requests_in_flight", "HTTP requests being handled", registry=r,
                               multiprocess_mode="livesum")  # fmt: skip
        # Per model version, to compare the arms of a split (the dashboard's versions table, Grafana).
        # Labels are the loaded versions only (forget_version drops an unloaded one's series), times
        # two outcomes or the model's few tasks: the series stay bounded.
        self.version_requests = Histogram("ranker_version_request_duration_seconds",
                                          "whole POST /v1/rank requests by the model version that answered",
                                          ["model", "version", "outcome"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.scored = Counter("ranker_scored_candidates", "candidates scored, by model version",
                              ["model", "version"], registry=r)  # fmt: skip
        # Divided by ranker_scored_candidates_total: the mean prediction per task (a probability for
        # a binary task), which shows a version that predicts differently before its outcomes do.
        self.predicted = Counter("ranker_predicted_value", "sum of the per-task predictions over scored candidates",
                                 ["model", "version", "task"], registry=r)  # fmt: skip
        # The item-row cache (service.ranking.itemrows): hit rate = hit / (hit + miss) rows; a clear
        # empties a version's cache when new rows do not fit (often: RANKER_ITEM_CACHE_ROWS is too small).
        self.item_rows = Counter("ranker_item_rows", "candidate item rows by item-row cache outcome", ["result"], registry=r)
        self.item_row_clears = Counter("ranker_item_row_cache_clears", "item-row caches emptied because they were full",
                                       registry=r)  # fmt: skip
        # Shadow scoring (service.ranking.shadow): each sampled request has one outcome: "scored",
        # "queue_full" (skipped: the shadow worker is behind), "failed" (the shadow raised),
        # "not_loaded" (the shadow version is not loaded here). Then, per (serving, shadow) pair,
        # how far the shadow's answer is from the one the client got.
        self.shadow_requests = Counter("ranker_shadow_requests_total", "requests sampled for a shadow version, by outcome",
                                       ["model", "outcome"], registry=r)  # fmt: skip
        self.shadow_inference = Histogram("ranker_shadow_inference_duration_seconds",
                                          "the shadow version's ONNX Runtime time per call", ["model", "version"],
                                          buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        pair = ["model", "serving", "shadow"]
        self.shadow_overlap = Histogram("ranker_shadow_top10_overlap",
                                        "share of the served top 10 that is also in the shadow's top 10", pair,
                                        buckets=OVERLAP_BUCKETS, registry=r)  # fmt: skip
        self.shadow_correlation = Histogram("ranker_shadow_rank_correlation",
                                            "Spearman correlation of the served and the shadow order of all candidates",
                                            pair, buckets=CORRELATION_BUCKETS, registry=r)  # fmt: skip
        self.shadow_difference = Histogram("ranker_shadow_abs_difference",
                                           "mean |served - shadow| of a task's output over a request's candidates",
                                           [*pair, "task"], buckets=DIFFERENCE_BUCKETS, registry=r)  # fmt: skip

    def close(self) -> None:
        """A worker stopping: its live gauges (requests in flight) leave the sum; its counters stay."""
        if multiprocess_dir():
            mark_process_dead(os.getpid())

    def observe_inference(self, mv: "ModelVersion", seconds: float) -> None:
        self.inference.labels(mv.name, str(mv.version), mv.engine.provider).observe(seconds)

    def observe_predictions(self, mv: "ModelVersion", values: dict[str, np.ndarray]) -> None:
        """One request's scored candidates and the sum of each task's predictions over them."""
        version = str(mv.version)
        for task, v in values.items():
            self.predicted.labels(mv.name, version, task).inc(float(np.sum(v, dtype=np.float64)))
        self.scored.labels(mv.name, version).inc(len(next(iter(values.values()))))

    def observe_version_request(self, mv: "ModelVersion", seconds: float, ok: bool) -> None:
        self.version_requests.labels(mv.name, str(mv.version), "ok" if ok else "error").observe(seconds)

    def forget_version(self, mv: "ModelVersion") -> None:
        """Drop an unloaded version's series, so label sets do not grow with every version ever served.
        Not with several workers: prometheus-client cannot remove a series from the shared files, so
        there they stay (with traffic share 0) until the service restarts."""
        if multiprocess_dir():
            return
        model, version = mv.name, str(mv.version)
        labels = [(self.traffic_share, (model, version)), (self.inference, (model, version, mv.engine.provider)),
                  (self.scored, (model, version))]  # fmt: skip
        labels += [(self.version_requests, (model, version, outcome)) for outcome in ("ok", "error")]
        labels += [(self.predicted, (model, version, t.name)) for t in mv.spec.tasks]
        for metric, values in labels:
            try:
                metric.remove(*values)
            except KeyError:
                pass

    def observe_item_rows(self, hits: int, misses: int, cleared: bool) -> None:
        if hits:
            self.item_rows.labels("hit").inc(hits)
        if misses:
            self.item_rows.labels("miss").inc(misses)
        if cleared:
            self.item_row_clears.inc()

    def observe_store(self, store: str, seconds: float, misses: int) -> None:
        self.store_latency.labels(store).observe(seconds)
        if misses:
            self.store_misses.labels(store).inc(misses)


class RequestMetricsMiddleware:
    """Pure ASGI middleware: latency by route template (not raw path, to bound label values), and
    errors by kind (each error answer records its kind in the scope's state)."""

    def __init__(self, app, metrics: Metrics, routes: Sequence[BaseRoute] = ()):
        self.app, self.metrics, self.routes = app, metrics, routes

    def _template(self, scope) -> str:
        """The route a request was for when it was answered before routing (a body limit's 413/408)."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return getattr(route, "path", "unmatched")
        return "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            route = scope.get("route")
            path = getattr(route, "path", "unmatched") if route is not None else self._template(scope)
            self.metrics.requests.labels(path, scope["method"], str(status["code"])).observe(seconds)
            state = scope.get("state", {})
            kind = state.get("error_kind")  # unhandled errors: set by InternalErrorMiddleware
            if kind:
                self.metrics.errors.labels(kind).inc()
            served_by = state.get("model_version")  # set by /v1/rank once it knows the version
            if served_by is not None:
                self.metrics.observe_version_request(served_by, seconds, status["code"] < 400)
