"""The serving-time impression log and its feedback: what the service writes (service.features.
featurelog, POST /v1/feedback) and what training reads back (training.data.logsink, .logjoin).

An impression record is one sampled /v1/rank request: the request id, the time, the user id, the
model and version, the raw feature values the transform encoded (`shared` for the user and
context, `per_row` per candidate, in the request's candidate order), each candidate's id, its
position in the answer, its score and each task's output. `rows` flattens a record into one row
per candidate: every raw feature under its own name (the layout training/data/stream.py reads)
and the log's own fields under `log.` and `output.` names, which no feature can take.

A feedback event says what a user did with an impression: {request_id, item_id, task, value}.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from contract.features import canonical

IMPRESSIONS_STREAM = "log:impressions"  # under the Redis prefix
FEEDBACK_STREAM = "log:feedback"
REQUEST_ID, TIME, USER_ID, MODEL, VERSION = "log.request_id", "log.time", "log.user_id", "log.model", "log.version"
ITEM_ID, POSITION, SCORE = "log.item_id", "log.position", "log.score"
RETURNED = "log.returned"  # the candidate was in the answer (position < the items returned: top_k)
OUTPUT = "output."  # + task name


def plain(values: Any) -> Any:
    """A column as JSON takes it: arrays to lists (object arrays hold strings, numbers and None)."""
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def record(request_id: str, user_id: str, model: str, version: int, ids: list[str], shared: dict, per_row: dict,
           outputs: dict[str, np.ndarray], order: np.ndarray, log_score: np.ndarray, returned: int | None = None
           ) -> dict:  # fmt: skip
    """One logged request: the candidates in the request's order, `position` their rank in the answer
    (0 = first); `returned`, how many the answer held (top_k; all when None)."""
    position = np.empty(len(ids), dtype=np.int64)
    position[order] = np.arange(len(order))
    return {
        "request_id": request_id, "time": time.time(), "user_id": user_id, "model": model, "version": version,
        "returned": len(ids) if returned is None else returned,
        "shared": shared, "per_row": {name: plain(values) for name, values in per_row.items()},
        "candidates": {"id": list(ids), "position": position, "score": np.exp(log_score),
                       "outputs": {task: np.asarray(v, dtype=np.float64) for task, v in outputs.items()}},
    }  # fmt: skip


def rows(rec: dict) -> dict[str, list]:
    """A record (as parsed from the stream's JSON) as columns, one row per candidate."""
    candidates = rec["candidates"]
    n = len(candidates["id"])
    columns: dict[str, list] = {
        REQUEST_ID: [rec["request_id"]] * n, TIME: [rec["time"]] * n, USER_ID: [rec["user_id"]] * n,
        MODEL: [rec["model"]] * n, VERSION: [rec["version"]] * n, ITEM_ID: list(candidates["id"]),
        POSITION: list(candidates["position"]), SCORE: list(candidates["score"]),
        RETURNED: [p < rec.get("returned", n) for p in candidates["position"]],
    }  # fmt: skip
    for task, values in candidates["outputs"].items():
        columns[OUTPUT + task] = list(values)
    for name, value in rec["shared"].items():
        columns[name] = [value] * n
    for name, values in rec["per_row"].items():
        columns[name] = list(values)
    return columns


def storable(values: list) -> list:
    """A raw feature column in one Parquet type that encodes as the original did: numbers as
    float64 (NaN for missing) when every value is a plain number, else the canonical strings the
    transform hashes categories by (21, 21.0 and "21" agree; None for missing)."""
    if all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
        return [math.nan if v is None else float(v) for v in values]
    return [canonical(v) for v in values]
