"""Dependencies: the app's heavy objects, reached through the request (created in the lifespan)."""

from typing import Annotated

from fastapi import Depends, Request

from service.lifecycle.registry import Registry
from service.observability.livestats import LiveStats
from service.observability.metrics import Metrics
from service.ranking.ranker import Ranker
from service.settings import Settings


def get_registry(request: Request) -> Registry:
    return request.app.state.registry


def get_ranker(request: Request) -> Ranker:
    return request.app.state.ranker


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_live_stats(request: Request) -> LiveStats:
    return request.app.state.live_stats


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


RegistryDep = Annotated[Registry, Depends(get_registry)]
RankerDep = Annotated[Ranker, Depends(get_ranker)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
LiveStatsDep = Annotated[LiveStats, Depends(get_live_stats)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
