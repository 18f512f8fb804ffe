"""Admin endpoints (docs/api.md): load, activate, rollback, unload, split, shadow. Bearer token required."""

import hmac
from typing import Annotated, Any, Callable, Coroutine

from fastapi import APIRouter, Depends, Header, Path, Request, Response

from contract.modelspec import NAME_PATTERN
from service.api.deps import RegistryDep, SettingsDep
from service.api.errors import ApiError
from service.api.jsonbody import JSONRoute
from service.lifecycle.routing import RoutingState
from service.lifecycle.repository import VersionState
from service.schemas import (ActivateRequest, RoutingResponse, ShadowRequest, ShadowResponse, SplitRequest,
                             error_responses)


def require_admin(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    if settings.admin_token is None:
        raise ApiError(403, "admin_disabled", "the admin API is off; set RANKER_ADMIN_TOKEN to enable it")
    scheme, _, token = (authorization or "").partition(" ")
    expected = settings.admin_token.get_secret_value().encode()
    # compare_digest: the time taken does not reveal how much of the token matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise ApiError(401, "unauthorized", "admin endpoints need 'Authorization: Bearer <RANKER_ADMIN_TOKEN>'")


class AdminRoute(JSONRoute):
    """Checks the token before FastAPI reads the body: a caller without it learns nothing about what
    a valid body looks like (a 401, not a 400 for malformed JSON). Bodies are read as on /v1/rank."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            require_admin(request.app.state.settings, request.headers.get("authorization"))
            return await handler(request)

        return route_handler


ERRORS = error_responses(400, 401, 403, 404, 408, 409, 413, 415, 422, 503)
# The dependency documents the Authorization header in the OpenAPI; AdminRoute has checked it already.
router = APIRouter(prefix="/v1/admin/models", tags=["admin"], dependencies=[Depends(require_admin)], responses=ERRORS,
                   route_class=AdminRoute)  # fmt: skip
Name = Annotated[str, Path(pattern=NAME_PATTERN)]
Version = Annotated[int, Path(ge=1)]


def routing(name: str, state: RoutingState) -> RoutingResponse:
    return RoutingResponse(model=name, active=state.active, split=state.weights() if state.split else None)


@router.post("/{name}/versions/{version}/load")
def load(name: Name, version: Version, registry: RegistryDep) -> dict:
    """Load, check and warm up a version without routing traffic to it."""
    entry = registry.admin_load(name, version)
    if entry.state != VersionState.READY:
        raise ApiError(422, "load_failed", f"{name}/{version} failed to load: {entry.reason}", "version")
    return next(v.as_dict() for v in registry.describe(name) if v.version == version)


@router.post("/{name}/activate")
def activate(name: Name, body: ActivateRequest, registry: RegistryDep) -> RoutingResponse:
    """Send every user to one ready version (on every replica)."""
    return routing(name, registry.activate(name, body.version, body.allow_interface_change))


@router.post("/{name}/rollback")
def rollback(name: Name, registry: RegistryDep) -> RoutingResponse:
    """Go back to the routing before the last change."""
    return routing(name, registry.rollback(name))


@router.put("/{name}/split")
def split(name: Name, body: SplitRequest, registry: RegistryDep) -> RoutingResponse:
    """Share traffic between ready versions; a user's bucket keeps them in one arm."""
    return routing(name, registry.split(name, body.weights, body.allow_interface_change))


@router.delete("/{name}/versions/{version}")
def unload(name: Name, version: Version, registry: RegistryDep) -> dict:
    """Release a version that receives no traffic."""
    registry.unload(name, version)
    return {"model": name, "version": version, "state": "unloaded"}


@router.put("/{name}/shadow")
def shadow(name: Name, body: ShadowRequest, registry: RegistryDep) -> ShadowResponse:
    """Score a sampled share of the model's requests with a version that takes no traffic, off the
    request path, and compare its answers with the served ones (metrics, dashboard; every replica)."""
    setting = registry.shadows.set(name, body.version, body.sample)
    return ShadowResponse(model=name, shadow=ShadowRequest(version=setting.version, sample=setting.sample))


@router.delete("/{name}/shadow")
def stop_shadow(name: Name, registry: RegistryDep) -> ShadowResponse:
    """Stop shadow scoring for the model (on every replica)."""
    registry.shadows.clear(name)
    return ShadowResponse(model=name, shadow=None)
