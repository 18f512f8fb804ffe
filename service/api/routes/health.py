from fastapi import APIRouter

from service.api.deps import RegistryDep
from service.api.errors import ApiError
from service.schemas import error_responses

router = APIRouter(tags=["health"])


@router.get("/health/live")
def live() -> dict:
    return {"status": "live"}


@router.get("/health/ready", responses=error_responses(503))
def ready(registry: RegistryDep) -> dict:
    if not registry.ready():
        raise ApiError(503, "not_ready", "no model version is loaded and warmed up")
    return {"status": "ready", "models": [f"{v.name}/{v.version}" for v in registry.describe() if v.active]}
