"""Wire models of the HTTP API (pydantic v2). Logic lives elsewhere."""

from __future__ import annotations

import math
from typing import Annotated, Any, NotRequired

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, WithJsonSchema, with_config
from typing_extensions import TypedDict  # pydantic needs this one below Python 3.12

from contract.modelspec import NAME_PATTERN, VideoLenTransform

MAX_FEATURE_TEXT = 1024


def _feature_value(value: Any) -> Any:
    """A raw feature value is a JSON scalar, kept as sent ("12" stays text, true stays a bool)."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_FEATURE_TEXT:
            raise ValueError(f"must be at most {MAX_FEATURE_TEXT} characters")
        return value
    raise ValueError("must be a string, a number, a boolean or null")


FeatureValue = Annotated[
    Any,
    PlainValidator(_feature_value),
    WithJsonSchema({"anyOf": [{"type": "string", "maxLength": MAX_FEATURE_TEXT}, {"type": "number"},
                              {"type": "boolean"}, {"type": "null"}]}),  # fmt: skip
]
FeatureMap = dict[Annotated[str, Field(min_length=1, max_length=128)], FeatureValue]
Id = Annotated[str, Field(min_length=1, max_length=256)]


# strict: a JSON value of the wrong type is a 422, never coerced ("2" is not 2, true is not 1,
# 2.0 is not an int); an integer still counts as a float.
WIRE = ConfigDict(extra="forbid", strict=True)


class _Wire(BaseModel):
    model_config = WIRE


class User(_Wire):
    id: Id
    features: FeatureMap = Field(default_factory=dict)


@with_config(WIRE)
class Candidate(TypedDict):
    # A TypedDict, not a model: a request carries up to thousands of candidates, and pydantic
    # validates plain dicts in less than half the time it takes to build model instances (0.41 ->
    # 0.17 ms for 500). Absent keys stay absent: read them with .get().
    id: Id
    video_len: NotRequired[
        Annotated[float | None, Field(gt=0, allow_inf_nan=False,
                                      description="seconds; when absent, the item's stored video_len is used")]
    ]  # fmt: skip
    features: NotRequired[FeatureMap]


RANK_EXAMPLE = {
    "request_id": "feed-refresh-1",
    "user": {"id": "u42", "features": {"age_bucket": "25-34", "device": "ios"}},
    "context": {"network": "wifi", "hour": 21},
    "candidates": [
        {"id": "v1", "video_len": 35.0, "features": {"category": "music"}},
        {"id": "v2", "video_len": 12.0},
        {"id": "v3", "video_len": 180.0, "features": {"category": "comedy", "author_tier": "star"}},
    ],
    "top_k": 2,
    "weights": {"vtr": 1.0, "vcr": 0.6, "shr": 0.2, "cmr": 0.1},
    "video_len_transform": {"kind": "sigmoid", "mu": 30.0, "s": 15.0},
    "explain": True,
}


class RankRequest(_Wire):
    model_config = ConfigDict(**WIRE, json_schema_extra={"examples": [RANK_EXAMPLE]})

    request_id: Annotated[str, Field(max_length=128)] | None = None
    user: User
    context: FeatureMap = Field(default_factory=dict)
    candidates: list[Candidate] = Field(min_length=1)
    top_k: Annotated[int, Field(ge=1)] | None = None
    weights: dict[Annotated[str, Field(max_length=64)], Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = Field(
        None, description="per-task score exponents; override model.json's defaults task by task; 0 drops a task"
    )
    video_len_transform: VideoLenTransform | None = None
    model: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    version: Annotated[int, Field(ge=1)] | None = None
    explain: bool = False


class Explain(BaseModel):
    factors: dict[str, float] = Field(description="p_k^w_k per task with w_k > 0")
    f_video_len: float
    log_score: float = Field(description="the exact log of the score, which orders the items: a score below "
                             "1e-308 reads 0.0 in float64, its log does not")  # fmt: skip


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


ERROR_DESCRIPTIONS = {
    400: "The body is not valid JSON (code `invalid_json`, field `body`; the message gives line, column and "
         "offset of the fault).",
    401: "The admin token is missing or wrong.",
    403: "The admin API is off (no RANKER_ADMIN_TOKEN).",
    404: "Unknown model, version or path.",
    408: "The body did not arrive in time.",
    409: "A conflict with the model's state (a version not ready, serving, or of another interface).",
    413: "The body or the number of candidates is over the limit.",
    415: "The body was not sent as application/json.",
    422: "Valid JSON that breaks the schema or a rule; `field` names the offending field as the client wrote it.",
    503: "No model is ready, or the control plane cannot be reached.",
}


def error_responses(*codes: int) -> dict:
    """OpenAPI entries for the error statuses a route answers, each in the one error shape."""
    return {code: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


# ---- admin ----


INTERFACE_OVERRIDE = ("route to a version whose interface (tasks, outputs, feature names, kinds and sources) "
                      "differs from the serving version's; without it such a change is a 409")


class ActivateRequest(_Wire):
    model_config = ConfigDict(**WIRE, json_schema_extra={"examples": [{"version": 4}]})

    version: Annotated[int, Field(ge=1)]
    allow_interface_change: bool = Field(False, description=INTERFACE_OVERRIDE)


def _version_key(key: Any) -> Any:
    """A JSON object key naming a version: its decimal digits exactly ("3"; not " 3", "3.0", "03")."""
    if isinstance(key, str) and key.isascii() and key.isdigit() and not key.startswith("0") and len(key) <= 9:
        return int(key)
    return key  # left for the int check to refuse, naming the key


VersionKey = Annotated[int, BeforeValidator(_version_key), Field(ge=1)]


class SplitRequest(_Wire):
    model_config = ConfigDict(**WIRE, json_schema_extra={"examples": [{"weights": {"3": 0.9, "4": 0.1}}]})

    weights: dict[VersionKey, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        min_length=1, description='traffic weight per version, each > 0, the active version included, e.g. '
        '{"1": 0.9, "2": 0.1}; normalised to whole A/B buckets out of 10,000 (shares in steps of 0.0001)'
    )
    allow_interface_change: bool = Field(False, description=INTERFACE_OVERRIDE)


class RoutingResponse(BaseModel):
    model: str
    active: int
    split: dict[int, float] | None = Field(description="each version's share of users (A/B buckets / 10,000)")


class ShadowRequest(_Wire):
    model_config = ConfigDict(**WIRE, json_schema_extra={"examples": [{"version": 5, "sample": 0.2}]})

    version: Annotated[int, Field(ge=1, description="a ready version that takes no traffic")]
    sample: Annotated[float, Field(gt=0, le=1, description="share of the model's requests it scores as well")] = 1.0


class ShadowResponse(BaseModel):
    model: str
    shadow: ShadowRequest | None = Field(description="the version scoring in the shadow and its sample; null: none")


# ---- feedback ----


class FeedbackEvent(_Wire):
    request_id: Annotated[str, Field(min_length=1, max_length=128, description="the ranking's request_id")]
    item_id: Annotated[str, Field(min_length=1, max_length=256)]
    task: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64, description="e.g. ctr, vtr, shr")]
    value: Annotated[float, Field(allow_inf_nan=False, description="1 / 0 for a binary task, the measured value else")]


class FeedbackRequest(_Wire):
    model_config = ConfigDict(**WIRE, json_schema_extra={"examples": [{"events": [
        {"request_id": "r-123", "item_id": "v42", "task": "ctr", "value": 1}]}]})  # fmt: skip

    events: list[FeedbackEvent] = Field(min_length=1, max_length=1000)


class FeedbackResponse(BaseModel):
    accepted: int
