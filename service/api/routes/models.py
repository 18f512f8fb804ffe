from typing import Annotated

from fastapi import APIRouter, Path

from contract.modelspec import NAME_PATTERN
from service.api.deps import RegistryDep
from service.api.errors import ApiError
from service.schemas import error_responses

router = APIRouter(tags=["models"], responses=error_responses(404, 422))


@router.get("/v1/models")
def list_models(registry: RegistryDep) -> dict:
    """Every known version: state (loading/ready/failed), provider, tasks, default weights, traffic share."""
    return {"models": [v.as_dict() for v in registry.describe()]}


@router.get("/v1/models/{name}")
def one_model(name: Annotated[str, Path(pattern=NAME_PATTERN)], registry: RegistryDep) -> dict:
    """One model's versions, with the feature schema of each loaded one."""
    rows = [v.as_dict() for v in registry.describe(name)]
    if not rows:
        raise ApiError(404, "model_not_found", f"model {name!r} is not known", "name")
    for row in rows:
        handle = registry.handle(name, row["version"])
        if handle is not None:
            row["features"] = [f.model_dump(exclude_defaults=True) for f in handle.spec.features]
            row["video_len_transform"] = handle.spec.scoring.video_len_transform.model_dump()
    return {"name": name, "versions": rows}
