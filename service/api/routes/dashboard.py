from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from service.api.deps import LiveStatsDep, RegistryDep

router = APIRouter(tags=["monitoring"])


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> HTMLResponse:
    """The live dashboard: one static page that polls /dashboard/data (no build step, no CDN)."""
    return HTMLResponse(resources.files("service").joinpath("static/dashboard.html").read_text(encoding="utf-8"))


@router.get("/dashboard/data")
def dashboard_data(live: LiveStatsDep, registry: RegistryDep) -> dict:
    """Request rate, latency percentiles, candidates and errors over the last window; the models and split."""
    return {**live.summary(), "models": [v.as_dict() for v in registry.describe()]}
