"""A request's candidates as columns: read once, each column in one C-level pass (map over dicts);
and the raw feature values a request ranks with. Imports NumPy and pydantic only: the bench peers
(bench/peers/core.py) assemble features with this same code in their own environments.

The request path touches every candidate several times (limits, duplicate ids, video_len, each item
feature); per-candidate Python there cost ~1 ms at 500 candidates. Here each column is one `map`
over the validated dicts, and Python loops run only over the exceptions (a duplicate, a missing
video_len), so the common request costs a few microseconds per feature, not per candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any, Sequence

import numpy as np

from contract.features import FeatureTransform
from service.problems import InvalidInput
from service.schemas import Candidate, RankRequest

VIDEO_LEN = "video_len"
# The stand-in for "no features" (none sent, or an item the store does not know). Shared by every
# request, so it must never be written to; dict.get needs a real dict, not a read-only proxy.
EMPTY: dict[str, Any] = {}


def _length(value: Any) -> float | None:
    """A usable video length in seconds (a finite number > 0), else None. True counts as 1."""
    if not isinstance(value, (int, float)):
        return None
    try:
        length = float(value)
    except OverflowError:  # an integer past the float range
        return None
    return length if 0 < length < math.inf else None


@dataclass(frozen=True)
class Candidates:
    ids: list[str]
    sent_video_len: np.ndarray  # (B,) float64: the request's video_len, NaN where it sent none
    sent_features: list[dict[str, Any]]  # per candidate, EMPTY where it sent none
    any_sent_features: bool

    @classmethod
    def of(cls, candidates: Sequence[Candidate]) -> "Candidates":
        # None (absent or null) becomes NaN; pydantic has already checked that sent ones are finite and > 0.
        lengths = np.array(list(map(dict.get, candidates, repeat(VIDEO_LEN))), dtype=np.float64)
        sent = list(map(dict.get, candidates, repeat("features"), repeat(EMPTY)))
        return cls(list(map(itemgetter("id"), candidates)), lengths, sent, any(sent))

    def check_ids(self) -> None:
        """422 naming the first repeated id."""
        if len(set(self.ids)) == len(self.ids):
            return
        seen: set[str] = set()
        for i, cid in enumerate(self.ids):
            if cid in seen:
                raise InvalidInput("duplicate_candidate", f"candidate id {cid!r} appears twice", f"candidates[{i}].id")
            seen.add(cid)

    def check_feature_counts(self, limit: int) -> None:
        """422 naming the first candidate that sent more than `limit` features."""
        if not self.any_sent_features or max(map(len, self.sent_features)) <= limit:
            return
        i, features = next((i, f) for i, f in enumerate(self.sent_features) if len(f) > limit)
        raise InvalidInput("too_many_features", f"{len(features)} features; at most {limit}", f"candidates[{i}].features")

    def video_len(self, stored: Sequence[dict[str, Any] | None],
                  default: float | None = None) -> tuple[np.ndarray, int]:  # fmt: skip
        """(B,) float64 seconds, and how many of them are `default`. Per candidate, the first of:
        the request's video_len; the request's features.video_len (422 if it is not a length); the
        store's value, if it is a length; the schema's `default`, as for any missing feature (an
        unknown item, the store down or holding a broken value). 422 only where the model has none."""
        lengths = self.sent_video_len.copy()
        defaulted = 0
        for i in np.flatnonzero(np.isnan(lengths)).tolist():
            sent = self.sent_features[i].get(VIDEO_LEN)
            if sent is not None:
                if _length(sent) is None:
                    raise InvalidInput("invalid_video_len", f"video_len must be a number of seconds > 0; got {sent!r}",
                                   f"candidates[{i}].features.video_len")  # fmt: skip
                lengths[i] = _length(sent)
                continue
            length = _length((stored[i] or EMPTY).get(VIDEO_LEN))
            if length is None and default is not None:
                length = default
                defaulted += 1
            if length is None:
                raise InvalidInput("missing_video_len",
                               "video_len (seconds, > 0) is required: the item has none stored and the model's "
                               "schema has no default", f"candidates[{i}].video_len")  # fmt: skip
            lengths[i] = length
        return lengths, defaulted

    def feature(self, name: str, stored: Sequence[dict[str, Any]]) -> list[Any]:
        """One item feature's raw values: the request's where a candidate sent it, else the store's."""
        from_store = map(dict.get, stored, repeat(name))
        if not self.any_sent_features:
            return list(from_store)
        return list(map(dict.get, self.sent_features, repeat(name), from_store))


def shared_features(transform: FeatureTransform, req: RankRequest,
                    stored_user: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """The user's and the context's raw values (the request wins over the store)."""
    stored_user = stored_user or EMPTY
    shared: dict[str, Any] = {}
    for name in transform.by_source["user"]:
        shared[name] = req.user.id if name in transform.from_id else req.user.features.get(name, stored_user.get(name))
    for name in transform.by_source["context"]:
        shared[name] = req.context.get(name)
    return shared


def raw_features(transform: FeatureTransform, req: RankRequest, candidates: Candidates,
                 stored_user: dict[str, Any] | None, stored_items: Sequence[dict[str, Any] | None]
                 ) -> tuple[dict[str, Any], dict[str, Any], np.ndarray, int]:  # fmt: skip
    """Shared (user + context) and per-candidate raw values (the request wins over the store), the
    candidates' video lengths, and how many lengths took the schema's default."""
    by_source, id_features = transform.by_source, transform.from_id
    shared = shared_features(transform, req, stored_user)
    stored = [s or EMPTY for s in stored_items]
    video_len, defaulted = candidates.video_len(stored, transform.dense_defaults.get(VIDEO_LEN))
    per_row: dict[str, Any] = {}
    for name in by_source["item"]:
        if name in id_features:
            per_row[name] = candidates.ids
        elif name == VIDEO_LEN:
            per_row[name] = video_len
        else:
            per_row[name] = candidates.feature(name, stored)
    return shared, per_row, video_len, defaulted
