"""create_app(settings): assembles the service. Nothing heavy happens at import."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service.api.errors import InternalErrorMiddleware, install_error_handlers
from service.api.limits import BodyLimitMiddleware
from service.api.routes import admin, dashboard, feedback, health, kserve, metrics, models, rank
from service.features.featurelog import FeatureLog
from service.features.feedback import FeedbackLog
from service.features.store import FeatureStore, InProcessStore, RedisStore, load_tables, redis_client
from service.lifecycle.control import ControlPlane, InProcessControl, RedisControl
from service.lifecycle.engine import choose_providers
from service.lifecycle.registry import Registry, VersionState
from service.observability.livestats import LiveStats
from service.observability.metrics import Metrics, RequestMetricsMiddleware
from service.observability.tracing import Tracing, from_environment
from service.ranking.ranker import Ranker
from service.ranking.shadow import ShadowScorer
from service.settings import Settings

log = logging.getLogger("ranker")


def build_backends(settings: Settings, metrics: Metrics,
                   store: FeatureStore | None = None) -> tuple[FeatureStore, ControlPlane]:  # fmt: skip
    """The control plane in Redis when a URL is configured, else in process; features per
    settings.feature_store (auto: Redis when a URL is configured, else the embedded tables), unless
    `store` is one already built (ranker-serve's Feast store, opened to check it before starting)."""
    control: ControlPlane = InProcessControl()
    if settings.redis_url:
        # The control plane tolerates a slower Redis than the per-request feature fetch.
        control = RedisControl(redis_client(settings.redis_url, 2.0), settings.redis_prefix, settings.control_resync_s,
                               on_problem=lambda event: metrics.control_events.labels(event).inc())  # fmt: skip
    if store is not None:
        return store, control
    if settings.feature_store == "feast":
        from service.features.feast_store import FeastStore  # feast is an optional dependency

        return FeastStore.of(settings), control
    if settings.redis_url and settings.feature_store != "embedded":
        timeout = settings.redis_timeout_ms / 1000
        store = RedisStore(redis_client(settings.redis_url, timeout), settings.redis_prefix,
                           memo_rows=settings.item_cache_rows)  # fmt: skip
        return store, control
    store = InProcessStore()
    if settings.features_dir is not None:
        counts = load_tables(store, settings.features_dir)
        log.info("embedded feature store: %s", counts)
    return store, control


def create_app(settings: Settings | None = None, tracing: Tracing | None = None, freeze_heap: bool = False,
               feature_store: FeatureStore | None = None) -> FastAPI:  # fmt: skip
    """The service. `tracing`: where /v1/rank's spans go; by default OTLP when the OTEL_EXPORTER_OTLP_*
    variables name an endpoint, else none (service.observability.tracing). `freeze_heap`: gc.freeze()
    once startup is done, for a process that is the service (ranker-serve), not one that hosts it.
    `feature_store`: one already built, else build_backends makes it from the settings."""
    settings = settings or Settings()
    metrics_ = Metrics()
    tracing = tracing if tracing is not None else from_environment()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        choose_providers(settings.device)  # --device cuda without a CUDA build: refuse to start, say why
        store, control = build_backends(settings, metrics_, feature_store)
        registry = Registry(settings, metrics_, control)
        registry.start()
        feature_log = None
        if settings.log_sample > 0:
            feature_log = FeatureLog(redis_client(settings.redis_url, 1.0), settings.redis_prefix, settings.log_sample,
                                     settings.log_stream_maxlen, settings.log_queue, metrics_)  # fmt: skip
        app.state.registry = registry
        shadow = ShadowScorer(metrics_, settings.shadow_queue)
        app.state.feedback = FeedbackLog(redis_client(settings.redis_url, 1.0) if settings.redis_url else None,
                                         settings.redis_prefix, settings.log_stream_maxlen)  # fmt: skip
        app.state.ranker = Ranker(registry, store, settings, metrics_, feature_log, shadow)
        providers = sorted({v.provider for v in registry.describe() if v.state == VersionState.READY})
        log.info("serving %s from %s; providers %s; feature store %s", [f"{v.name}/{v.version}"
                 for v in registry.describe() if v.active], settings.models_dir, providers, store.kind)  # fmt: skip
        if freeze_heap:
            # What is loaded by now lives as long as the process: out of the collector's sight, a full
            # collection does not walk it again. With Feast's imports (~184k objects) each one took ~100 ms,
            # the feature fetch's whole p99 at 500 candidates (bench/results/feature_fetch.json). The
            # cost: a startup version later unloaded is freed by reference counts only, not cycles.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            registry.close()
            shadow.close()
            if feature_log is not None:
                feature_log.close()  # writes what is queued
            if tracing is not None:
                tracing.shutdown()
            metrics_.close()

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from the package, not from a CDN, so
    # they render where the service runs without internet access.
    app = FastAPIOffline(
        title="ple-ranker",
        version="0.1.0",
        description="Ranks candidate videos for one user with a multi-task (PLE) model on ONNX Runtime.",
        lifespan=lifespan,
        # One path per route: POST /v1/rank/ is a 404 in the error shape naming /v1/rank, not a 307
        # with an empty body that clients do not follow (service.api.errors).
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.metrics = metrics_
    app.state.tracing = tracing
    app.state.live_stats = LiveStats(metrics_.exposition)  # windows for the /dashboard page (every worker's)
    install_error_handlers(app)
    routers = (rank.router, feedback.router, models.router, admin.router, kserve.router, health.router, metrics.router,
               dashboard.router)  # fmt: skip
    for router in routers:
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(InternalErrorMiddleware)
    # Our routers' own routes (full paths): the metrics name the route of a request answered before routing.
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics_, routes=[r for rt in routers for r in rt.routes])
    return app
