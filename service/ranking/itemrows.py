"""Encoded item rows, cached per model version (RANKER_ITEM_CACHE_ROWS).

A request's item columns are the same work for every request that names the same items: read each
store row's values, hash the categories, standardise the numbers. This cache keeps, per item id,
the version's encoded item columns beside the store row they were encoded from, so a request
gathers rows (one NumPy take) instead of encoding every candidate again.

- Valid while the store row is the same: a request's fetched rows are compared with the cached
  ones (`==`, which is an identity check where the store hands back the same objects: the embedded
  store, and the Redis store's decoded-row memo), so a row rewritten in the store is encoded again
  on the next request that names it. Per version: a new version starts empty, an unloaded one takes
  its cache with it.
- Bounded: `capacity` rows; when new rows do not fit, the whole cache is cleared (a count in the
  metrics) and refills from the requests that follow. Simple, and a hit rate that stays low says
  the capacity is below the catalogue being ranked.
- What the request itself decides is encoded per request, as before: the user and context columns,
  video_len (the request's, else the store's, else the default) and any feature a candidate sent.
- The result is exactly `FeatureTransform.encode` of the same raw values (tests/test_itemrows.py
  compares them); anything unusual (a value the transform refuses, the store degraded, more
  candidates than the capacity) returns None and the caller takes the plain path, which reports it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Iterable, Sequence

import numpy as np

from contract.features import Encoded, FeatureTransform, FeatureValueError
from service.ranking.candidates import EMPTY, VIDEO_LEN, Candidates, shared_features
from service.schemas import RankRequest

_ABSENT = object()  # "not cached", unlike None: "cached, and the store had no row"


@dataclass(frozen=True)
class _Part:
    """A transform of some of the features and where its columns go in the model's inputs."""

    transform: FeatureTransform
    sparse: np.ndarray
    dense: np.ndarray

    @classmethod
    def of(cls, transform: FeatureTransform, names: Iterable[str]) -> "_Part":
        sparse, dense = transform.columns(names)
        return cls(transform.subset(names), np.array(sparse, dtype=np.intp), np.array(dense, dtype=np.intp))


@dataclass
class Lookup:
    hits: int
    misses: int
    cleared: bool


class ItemRows:
    def __init__(self, transform: FeatureTransform, capacity: int):
        self.transform, self.capacity = transform, capacity
        # video_len is the request's decision (sent, stored or defaulted), never cached.
        self.names = [name for name in transform.by_source["item"] if name != VIDEO_LEN]  # the `missing` columns
        self.items = _Part.of(transform, self.names)
        self.shared = _Part.of(transform, transform.by_source["user"] + transform.by_source["context"])
        self.video_len = frozenset({VIDEO_LEN} & set(transform.by_source["item"]))
        # Rows as wide as the model's inputs (the item columns filled), so a request's rows are one take.
        self._sparse = np.zeros((capacity, transform.n_sparse), dtype=np.int64)
        self._dense = np.zeros((capacity, transform.n_dense), dtype=np.float32)
        self._missing = np.zeros((capacity, len(self.names)), dtype=bool)  # which features took the default
        self._slot: dict[str, int] = {}
        self._row: dict[str, Any] = {}  # the store row each cached id was encoded from
        self._overrides: dict[frozenset[str], tuple[_Part, np.ndarray]] = {}
        self._lock = threading.Lock()  # requests in the thread pool, shadows in theirs

    def __len__(self) -> int:
        return len(self._slot)

    def encode(self, req: RankRequest, candidates: Candidates, stored_user: dict | None,
               stored_items: Sequence[dict | None], video_len: np.ndarray
               ) -> tuple[Encoded, Lookup] | None:  # fmt: skip
        """The model's inputs for this request, or None where the plain path must answer."""
        n = len(candidates.ids)
        if not 0 < n <= self.capacity:
            return None
        try:
            user = self.shared.transform.encode(1, shared_features(self.transform, req, stored_user))
            overridden = self._overridden(candidates)
            override, kept = self._override_part(overridden)
            stored = [s or EMPTY for s in stored_items] if overridden - self.video_len else stored_items
            columns = {name: video_len if name == VIDEO_LEN else candidates.feature(name, stored)
                       for name in overridden}  # fmt: skip
            sent = override.transform.encode(n, per_row=columns)
            with self._lock:
                slots, lookup = self._slots(candidates.ids, stored_items)
                sparse, dense = self._sparse[slots], self._dense[slots]
                cached_defaults = int(np.count_nonzero(self._missing[np.ix_(slots, kept)]))
        except FeatureValueError:
            return None
        defaulted = user.defaulted + sent.defaulted + cached_defaults
        sparse[:, self.shared.sparse] = user.sparse_ids
        dense[:, self.shared.dense] = user.dense
        sparse[:, override.sparse] = sent.sparse_ids
        dense[:, override.dense] = sent.dense
        return Encoded(sparse, dense, defaulted), lookup

    def _overridden(self, candidates: Candidates) -> frozenset[str]:
        """Item features this request decides: video_len (sent, stored or defaulted: raw_features'
        rule) and every feature a candidate sent; an id feature always reads the id."""
        if not candidates.any_sent_features:
            return self.video_len
        sent = set().union(*candidates.sent_features)
        return self.video_len | {name for name in self.names if name in sent and name not in self.transform.from_id}

    def _override_part(self, names: frozenset[str]) -> tuple[_Part, np.ndarray]:
        """The part that encodes these features, and which cached `missing` columns still count."""
        part = self._overrides.get(names)
        if part is None:
            kept = np.array([k for k, name in enumerate(self.names) if name not in names], dtype=np.intp)
            part = self._overrides.setdefault(names, (_Part.of(self.transform, names), kept))
        return part

    def _slots(self, ids: list[str], stored: Sequence[dict | None]) -> tuple[np.ndarray, Lookup]:
        """Each id's slot, encoding the rows that are not cached or whose store row changed."""
        cached = list(map(self._row.get, ids, repeat(_ABSENT)))
        if cached == stored:  # identity first, so this is cheap where the store hands back the same rows
            slots = np.fromiter(map(self._slot.__getitem__, ids), dtype=np.intp, count=len(ids))
            return slots, Lookup(len(ids), 0, False)
        stale = [i for i, (c, s) in enumerate(zip(cached, stored)) if c is _ABSENT or c != s]
        new = sum(1 for i in stale if ids[i] not in self._slot)
        cleared = len(self._slot) + new > self.capacity
        if cleared:  # no room: start again from this request's rows
            self._slot.clear()
            self._row.clear()
            stale = list(range(len(ids)))
        self._put([ids[i] for i in stale], [stored[i] for i in stale])
        slots = np.fromiter(map(self._slot.__getitem__, ids), dtype=np.intp, count=len(ids))
        return slots, Lookup(len(ids) - len(stale), len(stale), cleared)

    def _put(self, ids: list[str], rows: list[dict | None]) -> None:
        """Encode these items from their store rows alone and cache them (raises FeatureValueError
        before caching anything when a store value cannot be used)."""
        item = self.items.transform
        rows_or_empty = [r or EMPTY for r in rows]
        per_row = {name: ids if name in item.from_id else [r.get(name) for r in rows_or_empty] for name in self.names}
        encoded = item.encode(len(ids), per_row=per_row)
        slots = []
        for item_id, row in zip(ids, rows):
            slot = self._slot.get(item_id)
            if slot is None:
                slot = self._slot[item_id] = len(self._slot)
            self._row[item_id] = row
            slots.append(slot)
        self._sparse[np.ix_(slots, self.items.sparse)] = encoded.sparse_ids
        self._dense[np.ix_(slots, self.items.dense)] = encoded.dense
        if self.names:
            self._missing[slots] = np.column_stack([encoded.missing[name] for name in self.names])
