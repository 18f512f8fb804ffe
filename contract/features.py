"""The one feature transform: raw values (strings, ints, floats) -> the model's input arrays.

Training and serving both call `FeatureTransform.encode`, so the same raw record gives the same
tensors on both sides. Torch-free and NumPy-only on purpose.

Inputs of every exported model:
  sparse_ids (B, n_sparse) int64  -- per-feature ids in [0, cardinality); 0 = missing/unknown;
                                     the categorical features, then the numbers encoded as bins
  dense      (B, n_dense)  float32 -- the other numbers: standardised, or piecewise-linear
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from contract.modelspec import FeatureSpec, TensorSpec

MISSING_ID = 0
CACHE_LIMIT = 1 << 18  # raw strings remembered per sparse feature (ids, categories)
SPARSE_INPUT = "sparse_ids"
DENSE_INPUT = "dense"


class FeatureValueError(ValueError):
    """A raw value that cannot be read as its feature's kind (e.g. text for a dense feature).

    `row` is the value's row for a per-row feature (a candidate), None for a shared one.
    """

    def __init__(self, feature: str, value: Any, row: int | None = None):
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        super().__init__(f"feature {feature!r}: cannot use {shown} as a finite number")
        self.feature, self.row = feature, row


def stable_hash(text: str) -> int:
    """64-bit hash that is the same in every process and on every machine (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


@lru_cache(maxsize=1 << 18)
def _hash_bucket(feature: str, canonical_value: str, buckets: int) -> int:
    # Salted by feature name so equal strings of different features land in unrelated buckets.
    return 1 + stable_hash(f"{feature}\x1f{canonical_value}") % (buckets - 1)


def canonical(value: Any) -> str | None:
    """The string a categorical value is hashed as: 21, 21.0 and "21" agree; None is missing."""
    if value is None or isinstance(value, (dict, list, tuple, set)):
        return None  # a category is a scalar; a nested value (a broken store row) counts as missing
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, np.floating):
        return canonical(float(value))
    text = str(value)
    return text if text != "" else None


@dataclass(frozen=True)
class Encoded:
    sparse_ids: np.ndarray  # (B, n_sparse) int64
    dense: np.ndarray  # (B, n_dense) float32
    defaulted: int  # raw values that were missing or unknown and took the schema's default
    # Per per-row feature, (B,) bool: the rows where it took the default (what `defaulted` counts).
    missing: dict[str, np.ndarray] = field(default_factory=dict)

    def as_inputs(self) -> dict[str, np.ndarray]:
        return {SPARSE_INPUT: self.sparse_ids, DENSE_INPUT: self.dense}


class FeatureTransform:
    """Encodes raw features per the schema of one model version."""

    def __init__(self, specs: Sequence[FeatureSpec]):
        self.specs = list(specs)
        self.sparse = [s for s in self.specs if s.kind == "sparse"]
        self.dense = [s for s in self.specs if s.kind == "dense"]
        self.binned = [s for s in self.dense if s.encoding == "bins"]  # numbers that become sparse ids
        self.n_sparse = len(self.sparse) + len(self.binned)
        self.n_dense = sum(s.width for s in self.dense)
        self._vocab = {
            s.name: {v: i + 1 for i, v in enumerate(s.vocabulary)} for s in self.sparse if s.vocabulary
        }
        self._cache: dict[str, dict[str, int]] = {s.name: {} for s in self.sparse}
        self.from_id = {s.name for s in self.specs if s.from_id}  # raw value = the entity's id
        self.by_source = {
            src: [s.name for s in self.specs if s.source == src] for src in ("user", "item", "context")
        }
        self.source_of = {s.name: s.source for s in self.specs}
        self.dense_defaults = {s.name: float(s.default) for s in self.dense if s.default is not None}  # type: ignore[arg-type]

    # ---- the schema of the model inputs ----

    def input_specs(self) -> list[TensorSpec]:
        return [
            TensorSpec(name=SPARSE_INPUT, dtype="int64", shape=[-1, self.n_sparse]),
            TensorSpec(name=DENSE_INPUT, dtype="float32", shape=[-1, self.n_dense]),
        ]

    def cardinalities(self) -> list[int]:
        return [s.cardinality for s in self.sparse + self.binned]

    def columns(self, names: Iterable[str]) -> tuple[list[int], list[int]]:
        """Where the named features sit in the inputs: (sparse_ids columns, dense columns), in the
        order a FeatureTransform of just those specs (kept in this schema's order) lays them out."""
        wanted = set(names)
        sparse = [j for j, s in enumerate(self.sparse) if s.name in wanted]
        sparse += [len(self.sparse) + k for k, s in enumerate(self.binned) if s.name in wanted]
        dense, column = [], 0
        for spec in self.dense:
            if spec.encoding != "bins":
                if spec.name in wanted:
                    dense += range(column, column + spec.width)
                column += spec.width
        return sparse, dense

    def subset(self, names: Iterable[str]) -> "FeatureTransform":
        """The transform of just these features, in this schema's order (see `columns`)."""
        wanted = set(names)
        return FeatureTransform([s for s in self.specs if s.name in wanted])

    # ---- one value ----

    def sparse_id(self, spec: FeatureSpec, value: Any) -> int:
        text = canonical(value)
        if text is None:
            text = canonical(spec.default)
            if text is None:
                return MISSING_ID
        if spec.vocabulary is not None:
            return self._vocab[spec.name].get(text, MISSING_ID)
        assert spec.buckets is not None
        return _hash_bucket(spec.name, text, spec.buckets)

    def _column_ids(self, spec: FeatureSpec, column: Sequence[Any]) -> np.ndarray:
        """Ids of a column of raw values: a dict lookup per string seen before, else sparse_id().

        Only str keys enter the cache, so values that compare equal across types (True == 1,
        21 == 21.0) can never hit each other's entry; they take the exact path every time.
        """
        cache = self._cache[spec.name]
        try:  # every value seen before (the common case): one C-level pass, no list in between
            return np.fromiter(map(cache.__getitem__, column), dtype=np.int64, count=len(column))
        except (KeyError, TypeError):  # TypeError: an unhashable value (a list from a broken store row)
            pass
        try:
            ids = list(map(cache.get, column))
        except TypeError:
            ids = [cache.get(v) if type(v) is str else None for v in column]
        if None in ids:
            for k, found in enumerate(ids):
                if found is None:
                    raw = column[k]
                    ids[k] = self.sparse_id(spec, raw)
                    if type(raw) is str and len(cache) < CACHE_LIMIT:
                        cache[raw] = ids[k]
        return np.array(ids, dtype=np.int64)

    def _shared_id(self, spec: FeatureSpec, value: Any) -> int:
        """sparse_id() through the feature's cache of strings (a request's user and context values)."""
        if type(value) is not str:
            return self.sparse_id(spec, value)
        cache = self._cache[spec.name]
        found = cache.get(value)
        if found is None:
            found = self.sparse_id(spec, value)
            if len(cache) < CACHE_LIMIT:
                cache[value] = found
        return found

    # ---- whole requests or data sets ----

    def encode(
        self,
        n: int,
        shared: Mapping[str, Any] | None = None,
        per_row: Mapping[str, Sequence[Any]] | None = None,
    ) -> Encoded:
        """Encode n rows.

        shared: one raw value per feature, broadcast to every row (a request's user and context).
        per_row: a sequence of n raw values per feature (candidates, or a training table).
        A feature in neither, or a None value, takes the schema's default.
        """
        shared = shared or {}
        per_row = per_row or {}
        defaulted = 0
        missing_rows: dict[str, np.ndarray] = {}
        sparse = np.empty((n, self.n_sparse), dtype=np.int64)
        for j, spec in enumerate(self.sparse):
            if spec.name in per_row:
                ids = self._column_ids(spec, per_row[spec.name])
                sparse[:, j] = ids
                missing_rows[spec.name] = ids == MISSING_ID
                defaulted += int(np.count_nonzero(missing_rows[spec.name]))
            else:
                sparse[:, j] = self._shared_id(spec, shared.get(spec.name))
                defaulted += int(sparse[0, j] == MISSING_ID) if n else 0
        dense = np.empty((n, self.n_dense), dtype=np.float32)
        column, binned = 0, len(self.sparse)  # where the next dense column / binned id goes
        for spec in self.dense:
            if spec.name in per_row:
                raw = _as_float_array(spec.name, per_row[spec.name], n)
                if np.isinf(raw).any():
                    row = int(np.flatnonzero(np.isinf(raw))[0])
                    raise FeatureValueError(spec.name, float(raw[row]), row)
            else:
                raw = np.full(n, _as_float(spec.name, shared.get(spec.name)))
            missing = np.isnan(raw)
            if spec.name in per_row:
                missing_rows[spec.name] = missing
            if missing.any():
                raw = np.where(missing, float(spec.default), raw)  # type: ignore[arg-type]
                defaulted += int(np.count_nonzero(missing)) if spec.name in per_row else 1
            if spec.encoding == "bins":
                sparse[:, binned] = bin_ids(spec, raw)
                binned += 1
            else:
                dense[:, column : column + spec.width] = encode_number(spec, raw)
                column += spec.width
        return Encoded(sparse, dense, defaulted, missing_rows)


def pre_standardise(spec: FeatureSpec, raw: np.ndarray) -> np.ndarray:
    """The value before mean/std scaling: clipped, then log1p-ed when the spec asks."""
    x = raw.astype(np.float64)
    if spec.clip_min is not None:
        x = np.maximum(x, spec.clip_min)
    if spec.log1p:
        x = np.log1p(x)
    return x


def standardise(spec: FeatureSpec, raw: np.ndarray) -> np.ndarray:
    return ((pre_standardise(spec, raw) - spec.mean) / spec.std).astype(np.float32)


def encode_number(spec: FeatureSpec, raw: np.ndarray) -> np.ndarray:
    """(n,) raw numbers (no NaN) -> (n, spec.width) float32 dense columns."""
    if spec.encoding == "standard":
        return standardise(spec, raw)[:, None]
    edges = np.asarray(spec.edges)  # piecewise: one column per bin, 1 below it ... 0 above it
    x = pre_standardise(spec, raw)[:, None]
    return np.clip((x - edges[:-1]) / np.diff(edges), 0.0, 1.0).astype(np.float32)


def bin_ids(spec: FeatureSpec, raw: np.ndarray) -> np.ndarray:
    """(n,) raw numbers -> (n,) int64 bin ids in 1 .. len(edges) + 1 (0 stays "missing")."""
    return 1 + np.searchsorted(np.asarray(spec.edges), pre_standardise(spec, raw), side="right")


def fit_dense(spec: FeatureSpec, raw: Iterable[float], encoding: str = "standard", bins: int = 16) -> FeatureSpec:
    """Return `spec` with its statistics fitted on training values (missing ones take the default):
    mean/std, and for `bins` / `piecewise` up to `bins` quantile bins (fewer where values repeat)."""
    values = np.asarray(list(raw), dtype=np.float64)
    values = np.where(np.isnan(values), float(spec.default), values)  # type: ignore[arg-type]
    x = pre_standardise(spec, values)
    std = float(x.std())
    update: dict[str, Any] = {"mean": float(x.mean()), "std": std if std > 1e-6 else 1.0}
    if encoding != "standard":
        edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, bins + 1)))
        if len(edges) < 2:  # a constant column: one bin around it
            edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
        update |= {"encoding": encoding, "edges": [float(e) for e in edges]}
    return FeatureSpec.model_validate(spec.model_dump() | update)


def _as_float(feature: str, value: Any, row: int | None = None) -> float:
    """A dense value as a float: None is NaN (the default follows); text, lists or a number past
    the float range (a 400-digit integer) are a FeatureValueError."""
    if value is None:
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise FeatureValueError(feature, value, row) from None
    if math.isinf(number):
        raise FeatureValueError(feature, value, row)
    return number


def _as_float_array(feature: str, column: Sequence[Any], n: int) -> np.ndarray:
    try:
        # None becomes NaN here, which then takes the default.
        return np.asarray(column, dtype=np.float64).reshape(n)
    except (TypeError, ValueError, OverflowError):
        return np.fromiter((_as_float(feature, v, i) for i, v in enumerate(column)), dtype=np.float64, count=n)


def usable_or_none(feature: str, column: Sequence[Any]) -> list[Any]:
    """A dense column with every value that is not a finite number replaced by None (its default)."""

    def usable(value: Any) -> Any:
        try:
            _as_float(feature, value)
        except FeatureValueError:
            return None
        return value

    return list(map(usable, column))
