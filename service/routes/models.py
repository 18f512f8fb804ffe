from fastapi import APIRouter

from service.deps import RegistryDep

router = APIRouter(tags=["models"])


@router.get("/v1/models")
def list_models(registry: RegistryDep) -> dict:
    """Every known model version: state (ready/failed), provider, whether it serves, traffic share."""
    return {"models": registry.describe()}
