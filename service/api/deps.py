"""Dependencies: the app's heavy objects, reached through the request (created in the lifespan).

Coroutines on purpose: FastAPI runs a plain-def dependency in its thread pool, one thread hand-off
per dependency per request, for what is an attribute read."""

from typing import Annotated

from fastapi import Depends, Request

from service.lifecycle.registry import Registry
from service.observability.livestats import LiveStats
from service.observability.metrics import Metrics
from service.ranking.ranker import Ranker
from service.settings import Settings


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


async def get_ranker(request: Request) -> Ranker:
    return request.app.state.ranker


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_live_stats(request: Request) -> LiveStats:
    return request.app.state.live_stats


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


RegistryDep = Annotated[Registry, Depends(get_registry)]
RankerDep = Annotated[Ranker, Depends(get_ranker)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
LiveStatsDep = Annotated[LiveStats, Depends(get_live_stats)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
