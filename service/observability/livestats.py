"""Windowed numbers for the live dashboard, read from the app's own Prometheus registry.

The histograms and counters in service.observability.metrics are cumulative since start. The dashboard wants
"the last few seconds", so LiveStats keeps snapshots of the cumulative values a second or more
apart and subtracts the oldest one inside the window from the newest, as PromQL's rate() does.
Percentiles come from bucket counts with histogram_quantile's own interpolation, so the page and a
Grafana panel over the same window show the same numbers. No HTTP here: the route is a thin wrapper.
About 300 lines: the snapshot of each dashboard table (whole service, versions, shadows) sits
beside the function that turns two of them into a window, one concern read in one place.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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


    def __add__(self, other: Histo) -> Histo:
        if not other.bounds:
            return self
        if not self.bounds:
            return other
        if other.bounds != self.bounds:
            raise ValueError("histograms with different buckets")
        return Histo(self.bounds, tuple(a + b for a, b in zip(self.counts, other.counts)),
                     self.sum + other.sum, self.count + other.count)  # fmt: skip


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


def histograms_by(families: Iterable[Metric], name: str, by: tuple[str, ...]) -> dict[tuple[str, ...], Histo]:
    """A histogram family summed by some of its labels (like `sum by (le, ...)` in PromQL)."""
    keys = {tuple(s.labels[k] for k in by) for f in families if f.name == name for s in f.samples}
    return {key: read_histogram(families, name, lambda l, key=key: tuple(l[k] for k in by) == key) for key in keys}


def counters_by(families: Iterable[Metric], name: str, by: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """A counter family's values summed by some of its labels (`name` without the _total suffix)."""
    out: dict[tuple[str, ...], float] = {}
    for family in families:
        if family.name == name:
            for s in family.samples:
                if s.name == name + "_total":
                    key = tuple(s.labels[k] for k in by)
                    out[key] = out.get(key, 0.0) + s.value
    return out


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
    versions: dict[tuple[str, str], VersionSnapshot] = field(default_factory=dict)  # by (model, version)
    shadows: dict[tuple[str, str, str], ShadowSnapshot] = field(default_factory=dict)  # by (model, serving, shadow)
    shadow_outcomes: dict[tuple[str, str], float] = field(default_factory=dict)  # by (model, outcome)


@dataclass(frozen=True)
class VersionSnapshot:
    """One model version's cumulative numbers: its arm of a split."""

    requests: Histo  # whole /v1/rank requests it answered, every outcome
    errors: float  # ... that were not a 2xx
    inference: Histo
    scored: float  # candidates scored
    predicted: dict[str, float]  # sum of the predictions per task


def version_snapshots(families: list[Metric]) -> dict[tuple[str, str], VersionSnapshot]:
    requests = histograms_by(families, "ranker_version_request_duration_seconds", ("model", "version", "outcome"))
    inference = histograms_by(families, "ranker_inference_duration_seconds", ("model", "version"))
    scored = counters_by(families, "ranker_scored_candidates", ("model", "version"))
    predicted = counters_by(families, "ranker_predicted_value", ("model", "version", "task"))
    keys = {k[:2] for k in requests} | set(inference) | set(scored)
    out = {}
    for key in keys:
        ok, failed = requests.get((*key, "ok"), EMPTY), requests.get((*key, "error"), EMPTY)
        out[key] = VersionSnapshot(
            requests=ok + failed, errors=failed.count, inference=inference.get(key, EMPTY),
            scored=scored.get(key, 0.0), predicted={t: v for (m, ver, t), v in predicted.items() if (m, ver) == key},
        )  # fmt: skip
    return out


@dataclass(frozen=True)
class ShadowSnapshot:
    """One (serving, shadow) pair's cumulative comparisons."""

    overlap: Histo
    correlation: Histo
    difference: dict[str, Histo]  # per task
    inference: Histo  # the shadow version's


def shadow_snapshots(families: list[Metric]) -> dict[tuple[str, str, str], ShadowSnapshot]:
    pair = ("model", "serving", "shadow")
    overlap = histograms_by(families, "ranker_shadow_top10_overlap", pair)
    correlation = histograms_by(families, "ranker_shadow_rank_correlation", pair)
    difference = histograms_by(families, "ranker_shadow_abs_difference", (*pair, "task"))
    inference = histograms_by(families, "ranker_shadow_inference_duration_seconds", ("model", "version"))
    return {key: ShadowSnapshot(overlap[key], correlation.get(key, EMPTY),
                                {k[3]: h for k, h in difference.items() if k[:3] == key},
                                inference.get((key[0], key[2]), EMPTY)) for key in overlap}  # fmt: skip


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
        versions=version_snapshots(families),
        shadows=shadow_snapshots(families),
        shadow_outcomes=counters_by(families, "ranker_shadow_requests", ("model", "outcome")),
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
        "versions": [summarize_version(key, old.versions.get(key), v, elapsed) for key, v in sorted(new.versions.items(),
                     key=lambda kv: (kv[0][0], int(kv[0][1])))],  # fmt: skip
        "shadows": [summarize_shadow(key, old, new, elapsed) for key in sorted(new.shadows)],
    }


def summarize_shadow(key: tuple[str, str, str], old: Snapshot, new: Snapshot, elapsed: float) -> dict:
    """One (serving, shadow) pair over the window: how far the shadow's answers were from the served
    ones (means), its inference time, and the model's shadow requests skipped or failed."""
    was = old.shadows.get(key) or ShadowSnapshot(EMPTY, EMPTY, {}, EMPTY)
    now = new.shadows[key]
    overlap, correlation, inference = now.overlap - was.overlap, now.correlation - was.correlation, now.inference - was.inference
    outcomes = {o: v - old.shadow_outcomes.get((m, o), 0.0) for (m, o), v in new.shadow_outcomes.items() if m == key[0]}
    return {
        "model": key[0],
        "serving": int(key[1]),
        "shadow": int(key[2]),
        "compared_per_s": overlap.count / elapsed,
        "top10_overlap": _ratio(overlap.sum, overlap.count),
        "rank_correlation": _ratio(correlation.sum, correlation.count),
        "abs_difference": {t: _ratio((h - was.difference.get(t, EMPTY)).sum, (h - was.difference.get(t, EMPTY)).count)
                           for t, h in sorted(now.difference.items())},  # fmt: skip
        "inference_ms": {"p50": _ms(histogram_quantile(0.5, inference)), "p99": _ms(histogram_quantile(0.99, inference))},
        "skipped_per_s": sum(v for o, v in outcomes.items() if o != "scored") / elapsed,
    }


def summarize_version(key: tuple[str, str], old: VersionSnapshot | None, new: VersionSnapshot, elapsed: float) -> dict:
    """One version's arm over the window. A version loaded again (its series dropped at unload and
    started anew) has counts below the older snapshot's: the window then starts at its reload."""
    if old is None or new.requests.count < old.requests.count or new.scored < old.scored:
        old = VersionSnapshot(EMPTY, 0.0, EMPTY, 0.0, {})
    requests, inference = new.requests - old.requests, new.inference - old.inference
    scored = new.scored - old.scored
    quantiles = {"p50": 0.5, "p99": 0.99}
    return {
        "model": key[0],
        "version": int(key[1]),
        "requests_per_s": requests.count / elapsed,
        "latency_ms": {name: _ms(histogram_quantile(q, requests)) for name, q in quantiles.items()},
        "inference_ms": {name: _ms(histogram_quantile(q, inference)) for name, q in quantiles.items()},
        "error_rate": _ratio(new.errors - old.errors, requests.count),
        "candidates_per_s": scored / elapsed,
        "mean_prediction": {t: _ratio(v - old.predicted.get(t, 0.0), scored) for t, v in sorted(new.predicted.items())},
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
