"""create_app(settings): assembles the service. Nothing heavy happens at import."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.errors import install_error_handlers
from service.limits import BodyLimitMiddleware
from service.livestats import LiveStats
from service.metrics import Metrics, RequestMetricsMiddleware
from service.ranking import Ranker
from service.registry import Registry
from service.routes import dashboard, health, metrics, models, rank
from service.settings import Settings
from service.store import InProcessStore

log = logging.getLogger("ranker")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics_ = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        registry = Registry(settings)
        registry.scan()
        for row in registry.describe():
            metrics_.model_loads.labels(row["name"], "ok" if row["state"] == "ready" else "failed").inc()
            if row["state"] == "ready":
                metrics_.model_load_seconds.labels(row["name"]).observe(row["load_seconds"])
        metrics_.record_models(registry.describe())
        store = InProcessStore.from_dir(settings.features_dir)
        app.state.registry = registry
        app.state.ranker = Ranker(registry, store, settings, metrics_)
        providers = sorted({m["provider"] for m in registry.describe() if m["state"] == "ready"})
        log.info("serving %s from %s; providers %s; store %s", [m["name"] + "/" + str(m["version"])
                 for m in registry.describe() if m["active"]], settings.models_dir, providers, store.kind)  # fmt: skip
        yield

    app = FastAPI(
        title="ple-ranker",
        version="0.1.0",
        description="Ranks candidate videos for one user with a multi-task (PLE) model on ONNX Runtime.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics_
    app.state.live_stats = LiveStats(metrics_.registry)  # windows for the /dashboard page
    install_error_handlers(app)
    for router in (rank.router, models.router, health.router, metrics.router, dashboard.router):
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics_)
    return app
