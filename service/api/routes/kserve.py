"""KServe v2 / Triton-compatible endpoints (raw model outputs; /v1/rank does the ranking)."""

from typing import Annotated

from fastapi import APIRouter, Path

from contract.modelspec import NAME_PATTERN
from service.api.deps import RegistryDep, SettingsDep
from service.api.errors import ApiError
from service.api.jsonbody import JSONRoute
from service.api.responses import JSONBytes
from service.lifecycle.repository import VersionState
from service.ranking import kserve
from service.schemas import error_responses

router = APIRouter(prefix="/v2", tags=["kserve-v2"], responses=error_responses(400, 404, 408, 409, 413, 415, 422, 503),
                   route_class=JSONRoute)  # bodies read as on /v1/rank: malformed JSON is a 400 with its position
Name = Annotated[str, Path(pattern=NAME_PATTERN)]
Version = Annotated[int, Path(ge=1)]


@router.get("/health/live")
def live() -> dict:
    return {"live": True}


@router.get("/health/ready")
def ready(registry: RegistryDep) -> dict:
    if not registry.ready():
        raise ApiError(503, "not_ready", "no model version is loaded and warmed up")
    return {"ready": True}


@router.get("/models/{name}")
def model_metadata(name: Name, registry: RegistryDep) -> dict:
    mv = registry.serving(name)
    return kserve.metadata(mv, [v.version for v in registry.describe(name) if v.state == VersionState.READY])


@router.get("/models/{name}/versions/{version}")
def version_metadata(name: Name, version: Version, registry: RegistryDep) -> dict:
    return kserve.metadata(registry.pinned(name, version), [version])


@router.get("/models/{name}/ready")
def model_ready(name: Name, registry: RegistryDep) -> dict:
    registry.serving(name)
    return {"name": name, "ready": True}


@router.get("/models/{name}/versions/{version}/ready")
def version_ready(name: Name, version: Version, registry: RegistryDep) -> dict:
    registry.pinned(name, version)
    return {"name": name, "version": str(version), "ready": True}


@router.post("/models/{name}/infer", response_class=JSONBytes)
def infer(name: Name, body: kserve.InferRequest, registry: RegistryDep, settings: SettingsDep) -> JSONBytes:
    return JSONBytes(kserve.infer(registry.serving(name), body, settings.max_candidates))


@router.post("/models/{name}/versions/{version}/infer", response_class=JSONBytes)
def infer_version(name: Name, version: Version, body: kserve.InferRequest, registry: RegistryDep,
                  settings: SettingsDep) -> JSONBytes:  # fmt: skip
    return JSONBytes(kserve.infer(registry.pinned(name, version), body, settings.max_candidates))
