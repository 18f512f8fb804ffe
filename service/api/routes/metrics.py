from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import MetricsDep

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", include_in_schema=False)
def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.exposition), media_type=CONTENT_TYPE_LATEST)
