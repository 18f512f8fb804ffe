"""Wire models of the HTTP API (pydantic v2). Logic lives elsewhere."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from service.modelspec import VideoLenTransform
from service.registry import NAME_PATTERN

# A raw feature value: a JSON scalar. Strict types, so "12" stays a string and true stays a bool.
FeatureValue = Union[StrictStr, StrictBool, StrictInt, Annotated[StrictFloat, Field(allow_inf_nan=False)], None]
FeatureMap = dict[Annotated[str, Field(min_length=1, max_length=128)], FeatureValue]
Id = Annotated[str, Field(min_length=1, max_length=256)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class User(_Wire):
    id: Id
    features: FeatureMap = {}


class Candidate(_Wire):
    id: Id
    video_len: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="seconds; when absent, the item's stored video_len is used"
    )
    features: FeatureMap = {}


class RankRequest(_Wire):
    request_id: Annotated[str, Field(max_length=128)] | None = None
    user: User
    context: FeatureMap = {}
    candidates: list[Candidate] = Field(min_length=1)
    top_k: Annotated[int, Field(ge=1)] | None = None
    weights: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = Field(
        None, description="per-task score exponents; override model.json's defaults task by task; 0 drops a task"
    )
    video_len_transform: VideoLenTransform | None = None
    model: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    version: Annotated[int, Field(ge=1)] | None = None
    explain: bool = False


class Explain(BaseModel):
    factors: dict[str, float]
    f_video_len: float


class RankedItem(BaseModel):
    id: str
    score: float
    tasks: dict[str, float]
    explain: Explain | None = None


class RankResponse(BaseModel):
    request_id: str | None
    model: str
    version: int
    bucket: int = Field(description="the user's A/B bucket (0-9999), a stable hash of the user id")
    features_defaulted: int = Field(description="raw feature values that were missing and took the schema's default")
    degraded: bool = Field(description="true when the feature store failed and every stored feature was defaulted")
    items: list[RankedItem]


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


# ---- admin ----


class ActivateRequest(_Wire):
    version: Annotated[int, Field(ge=1)]


class SplitRequest(_Wire):
    weights: dict[Annotated[int, Field(ge=1)], Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        min_length=1, description='traffic weight per version, e.g. {"3": 0.9, "4": 0.1}; normalised to sum 1'
    )


class RoutingResponse(BaseModel):
    model: str
    active: int
    split: dict[int, float] | None
