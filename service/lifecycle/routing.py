"""Routing of one model's traffic: the routing state (active version, A/B split as buckets) and its
parsing from what the control plane stores, which loaded version each A/B bucket goes to, the
user's bucket, and the order start-up tries versions in."""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from fractions import Fraction

import orjson

from contract.features import stable_hash
from service.lifecycle.repository import ModelVersion


class ControlCorrupt(ValueError):
    """A control key or history entry holds something no replica wrote (garbage, or an inconsistent
    split): it is ignored, logged and counted; an admin change overwrites it."""


MAX_VERSION = 10**9


def parse_version(value: object) -> int:
    """A version as stored: a positive integer, written as its digits (b"3", "3" or 3)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and value.isascii() and value.isdigit() and not value.startswith("0") and len(value) <= 9:
        value = int(value)
    if type(value) is not int or not 1 <= value <= MAX_VERSION:
        raise ControlCorrupt(f"not a version: {str(value)[:40]!r}")
    return value


def parse_split(active: int, raw: object) -> dict[int, int] | None:
    """A stored split, {version: share > 0} naming the active version, as bucket counts; None for none.
    Shares are what every replica writes (count / N_BUCKETS); older replicas wrote normalised floats
    (0.8999999999999999), which read back as the same counts."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise ControlCorrupt(f"not a split: {str(raw)[:60]!r}")
    weights: dict[int, float] = {}
    for key, weight in raw.items():
        if type(weight) not in (int, float) or not 0 < weight < math.inf:
            raise ControlCorrupt(f"split weight of {str(key)[:20]!r} is not a number > 0: {str(weight)[:20]}")
        weights[parse_version(key)] = float(weight)
    if active not in weights:
        raise ControlCorrupt(f"the split does not include the active version {active}")
    counts = {v: c for v, c in bucket_counts(weights).items() if c > 0}
    if active not in counts:
        raise ControlCorrupt(f"the active version {active} has less than one bucket in the split")
    return counts


N_BUCKETS = 10_000  # users hash into this many A/B buckets; a split gives each version a number of them


def bucket_counts(weights: dict[int, float]) -> dict[int, int]:
    """Weights (>= 0, at least one > 0) as whole buckets out of N_BUCKETS, summing to it exactly:
    each version gets the floor of its exact share, the buckets left over go to the largest
    remainders (largest remainder method; ties to the lower version). Exact fractions, so 0.9/0.1
    is 9000/1000 (share 0.9, not 0.8999999999999999) and weights near 1e308 cannot overflow."""
    exact = {v: Fraction(w) for v, w in weights.items()}
    total = sum(exact.values())
    scaled = {v: w * N_BUCKETS / total for v, w in exact.items()}
    counts = {v: math.floor(x) for v, x in scaled.items()}
    left = N_BUCKETS - sum(counts.values())
    for v in sorted(scaled, key=lambda v: (counts[v] - scaled[v], v))[:left]:
        counts[v] += 1
    return counts


def stored_object(raw: bytes | str, keys: set[str], what: str) -> dict:
    """A JSON object with exactly `keys`, as a replica writes it; ControlCorrupt for anything else."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ControlCorrupt(f"{what} is not JSON: {raw[:60]!r}") from None
    if not isinstance(data, dict) or set(data) != keys:
        raise ControlCorrupt(f"not {what}: {raw[:60]!r}")
    return data


@dataclass(frozen=True)
class RoutingState:
    active: int
    split: dict[int, int] | None = None  # A/B buckets per version, summing to N_BUCKETS; or None

    def buckets(self) -> dict[int, int]:
        return dict(self.split) if self.split else {self.active: N_BUCKETS}

    def weights(self) -> dict[int, float]:
        """Each version's share of users: count / N_BUCKETS, so 9000 buckets read 0.9 exactly."""
        return {v: c / N_BUCKETS for v, c in self.buckets().items()}

    def stored_split(self) -> dict[str, float] | None:
        """The split as JSON keeps it: shares, which older replicas read as weights."""
        return {str(v): w for v, w in self.weights().items()} if self.split else None

    def to_json(self) -> bytes:
        return orjson.dumps({"active": self.active, "split": self.stored_split()})

    @classmethod
    def from_json(cls, raw: bytes | str) -> "RoutingState":
        """A history entry; ControlCorrupt for anything to_json could not have written."""
        data = stored_object(raw, {"active", "split"}, "a routing state")
        active = parse_version(data["active"])
        return cls(active, parse_split(active, data["split"]))


@dataclass(frozen=True)
class ShadowSetting:
    """A version that scores a sampled share of a model's requests off the request path, for
    comparison only: its answers never reach a client."""

    version: int
    sample: float  # share of requests, in (0, 1]

    def to_json(self) -> bytes:
        return orjson.dumps({"version": self.version, "sample": self.sample})

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> "ShadowSetting | None":
        """The stored setting (None when none is stored); ControlCorrupt for what no replica writes."""
        if raw is None:
            return None
        data = stored_object(raw, {"version", "sample"}, "a shadow setting")
        sample = data["sample"]
        if type(sample) not in (int, float) or not 0 < sample <= 1:
            raise ControlCorrupt(f"shadow sample is not in (0, 1]: {str(sample)[:20]}")
        return cls(parse_version(data["version"]), float(sample))


def state_from_keys(active: bytes | None, split: bytes | None) -> RoutingState | None:
    """The state stored under the active and split keys (None when no version was ever set);
    ControlCorrupt for values no replica writes."""
    if active is None:
        return None
    version = parse_version(active)
    if split is None:
        return RoutingState(version)
    try:
        weights = orjson.loads(split)
    except orjson.JSONDecodeError:
        raise ControlCorrupt(f"split is not JSON: {split[:60]!r}") from None
    return RoutingState(version, parse_split(version, weights))


def user_bucket(user_id: str) -> int:
    return stable_hash(f"ab\x1f{user_id}") % N_BUCKETS


class Routing:
    """Immutable: which loaded version each A/B bucket goes to."""

    def __init__(self, state: RoutingState, handles: dict[int, ModelVersion]):
        self.state = state
        buckets = sorted(state.buckets().items())
        self.versions = [handles[v] for v, _ in buckets]
        self.bounds = list(itertools.accumulate(c for _, c in buckets))  # bucket b: the first version whose bound exceeds b

    def pick(self, bucket: int) -> ModelVersion:
        return self.versions[bisect.bisect_right(self.bounds, bucket)]


def startup_order(interfaces: dict) -> list[int]:
    """The order start-up tries versions in when no shared state names one: the newest version with
    the interface of the oldest one, then (if none of those loads) the newest with the next oldest
    interface, and so on. A model name's interface is fixed by its first version until an admin
    changes it (allow_interface_change, remembered by the control plane): a newer folder with
    another interface (another data set's model written under this name) never wins a restart."""
    order: list[int] = []
    for oldest in sorted(interfaces):
        if oldest not in order:
            order += sorted((v for v, i in interfaces.items() if i == interfaces[oldest]), reverse=True)
    return order
