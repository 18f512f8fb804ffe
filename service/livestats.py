"""Windowed numbers for the live dashboard, read from the app's own Prometheus registry.

The histograms and counters in service.metrics are cumulative since start. The dashboard wants
"the last few seconds", so LiveStats keeps snapshots of the cumulative values a second or more
apart and subtracts the oldest one inside the window from the newest, as PromQL's rate() does.
Percentiles come from bucket counts with histogram_quantile's own interpolation, so the page and a
Grafana panel over the same window show the same numbers. No HTTP here: the route is a thin wrapper.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

RANK_ROUTE = "/v1/rank"


@dataclass(frozen=True)
class Histo:
    """A histogram's cumulative bucket counts (upper bound -> count, +Inf last), sum and count."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]
    sum: float = 0.0
    count: float = 0.0

    def __sub__(self, older: Histo) -> Histo:
        if not older.bounds:
            return self
        if older.bounds != self.bounds:
            raise ValueError("histograms with different buckets")
        return Histo(self.bounds, tuple(a - b for a, b in zip(self.counts, older.counts)),
                     self.sum - older.sum, self.count - older.count)  # fmt: skip


EMPTY = Histo((), ())


def histogram_quantile(q: float, h: Histo) -> float | None:
    """PromQL's histogram_quantile on one histogram: None without observations; linear inside the
    bucket that holds rank q*count (the first bucket starts at 0); the highest finite bound when
    the rank falls in the +Inf bucket."""
    if not h.bounds or h.counts[-1] <= 0:
        return None
    rank = q * h.counts[-1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(h.bounds, h.counts):
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def read_histogram(families: Iterable[Metric], name: str, keep: Callable[[dict], bool] = lambda _: True) -> Histo:
    """Sum a histogram family over the label sets `keep` accepts (like `sum by (le)` in PromQL).
    `families`: a registry's collect(), or the parsed text of a /metrics page."""
    buckets: dict[float, float] = {}
    total_sum = total_count = 0.0
    for family in families:
        if family.name != name:
            continue
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k != "le"}
            if not keep(labels):
                continue
            if s.name == name + "_bucket":
                bound = float(s.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + s.value
            elif s.name == name + "_sum":
                total_sum += s.value
            elif s.name == name + "_count":
                total_count += s.value
    if not buckets:
        return EMPTY
    bounds = tuple(sorted(buckets))
    return Histo(bounds, tuple(buckets[b] for b in bounds), total_sum, total_count)


def read_counter(families: Iterable[Metric], name: str, by: str) -> dict[str, float]:
    """A counter family's values summed by one label (`name` without the _total suffix)."""
    out: dict[str, float] = {}
    for family in families:
        if family.name == name:
            for s in family.samples:
                if s.name == name + "_total":
                    out[s.labels[by]] = out.get(s.labels[by], 0.0) + s.value
    return out


@dataclass(frozen=True)
class Snapshot:
    at: float
    rank: Histo  # /v1/rank latency, every status
    rank_errors: float  # /v1/rank answers with a status >= 400
    rank_server_errors: float  # ... >= 500
    inference: Histo
    candidates: Histo
    errors: dict[str, float]  # ranker_errors_total by kind
    degraded: float


def take_snapshot(registry: CollectorRegistry, at: float) -> Snapshot:
    families = list(registry.collect())  # one pass over the registry, read several times below

    def rank_status(predicate: Callable[[int], bool]) -> float:
        h = read_histogram(families, "ranker_request_duration_seconds",
                           lambda l: l["route"] == RANK_ROUTE and predicate(int(l["status"])))  # fmt: skip
        return h.count

    return Snapshot(
        at=at,
        rank=read_histogram(families, "ranker_request_duration_seconds", lambda l: l["route"] == RANK_ROUTE),
        rank_errors=rank_status(lambda code: code >= 400),
        rank_server_errors=rank_status(lambda code: code >= 500),
        inference=read_histogram(families, "ranker_inference_duration_seconds"),
        candidates=read_histogram(families, "ranker_candidates_per_request"),
        errors=read_counter(families, "ranker_errors", "kind"),
        degraded=sum(read_counter(families, "ranker_degraded_requests", "reason").values()),
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def summarize(old: Snapshot, new: Snapshot) -> dict:
    """What happened between two snapshots, as the dashboard shows it (None where nothing did)."""
    elapsed = max(new.at - old.at, 1e-9)
    rank, inference, candidates = new.rank - old.rank, new.inference - old.inference, new.candidates - old.candidates
    errors = {k: (v - old.errors.get(k, 0.0)) / elapsed for k, v in sorted(new.errors.items())}
    return {
        "window_s": round(elapsed, 3),
        "requests_per_s": rank.count / elapsed,
        "requests_total": new.rank.count,
        "latency_ms": {f"p{round(q * 100)}": _ms(histogram_quantile(q, rank)) for q in (0.5, 0.95, 0.99)},
        "inference_ms": {f"p{round(q * 100)}": _ms(histogram_quantile(q, inference)) for q in (0.5, 0.95, 0.99)},
        "candidates_per_request": _ratio(candidates.sum, candidates.count),
        "error_rate": _ratio(new.rank_errors - old.rank_errors, rank.count),
        "server_error_rate": _ratio(new.rank_server_errors - old.rank_server_errors, rank.count),
        "errors_per_s": {k: v for k, v in errors.items() if v > 0},
        "degraded_per_s": (new.degraded - old.degraded) / elapsed,
    }


class LiveStats:
    """Snapshots of one registry over a sliding window; safe to call from several threads."""

    def __init__(self, registry: CollectorRegistry, window_s: float = 30.0, min_gap_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.registry, self.window_s, self.min_gap_s, self.clock = registry, window_s, min_gap_s, clock
        # The first snapshot is taken at start-up, so the first window reaches back to it.
        self._snaps: deque[Snapshot] = deque([take_snapshot(registry, clock())])
        self._lock = threading.Lock()

    def summary(self) -> dict:
        now = take_snapshot(self.registry, self.clock())
        with self._lock:
            # Several open pages poll at once: keep at most one snapshot per min_gap_s.
            if now.at - self._snaps[-1].at >= self.min_gap_s:
                self._snaps.append(now)
            # Drop snapshots while the next one still reaches back a whole window.
            while len(self._snaps) > 1 and self._snaps[1].at <= now.at - self.window_s:
                self._snaps.popleft()
            oldest = self._snaps[0]
        return summarize(oldest, now)
