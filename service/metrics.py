"""Prometheus metrics, declared once per app on a registry of its own (fresh in every test)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from service.registry import ModelVersion

# Fine enough to read p99 from 0.25 ms to 1 s.
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
CANDIDATE_BUCKETS = (1, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 4000)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
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
        self.model_loads = Counter("ranker_model_loads_total", "model version loads", ["model", "result"], registry=r)
        self.model_load_seconds = Histogram("ranker_model_load_duration_seconds", "load + check + warm-up time",
                                            ["model"], registry=r)  # fmt: skip
        self.model_swaps = Counter("ranker_model_swaps_total", "changes of the serving version or split",
                                   ["model"], registry=r)  # fmt: skip
        self.traffic_share = Gauge("ranker_model_traffic_share", "share of users routed to a version",
                                   ["model", "version"], registry=r)  # fmt: skip
        self.degraded = Counter("ranker_degraded_requests_total",
                                "requests answered with a fallback (e.g. features defaulted because Redis failed)",
                                ["reason"], registry=r)  # fmt: skip
        self.active_version = Gauge("ranker_model_active_version", "version serving by default", ["model"],
                                    registry=r)  # fmt: skip

    def observe_inference(self, mv: "ModelVersion", seconds: float) -> None:
        self.inference.labels(mv.name, str(mv.version), mv.engine.provider).observe(seconds)

    def forget_version(self, model: str, version: int, provider: str) -> None:
        """Drop an unloaded version's series, so label sets do not grow with every version ever served."""
        for metric, labels in ((self.traffic_share, (model, str(version))),
                               (self.inference, (model, str(version), provider))):  # fmt: skip
            try:
                metric.remove(*labels)
            except KeyError:
                pass

    def observe_store(self, store: str, seconds: float, misses: int) -> None:
        self.store_latency.labels(store).observe(seconds)
        if misses:
            self.store_misses.labels(store).inc(misses)


class RequestMetricsMiddleware:
    """Pure ASGI middleware: latency by route template (not raw path, to bound label values)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(path, scope["method"], str(status["code"])).observe(time.perf_counter() - start)
            kind = scope.get("state", {}).get("error_kind")
            if kind:
                self.metrics.errors.labels(kind).inc()
