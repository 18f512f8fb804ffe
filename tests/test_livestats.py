"""The dashboard's windowed numbers (service/observability/livestats.py), without HTTP."""

import numpy as np
import pytest
from prometheus_client import generate_latest

from service.lifecycle.registry import load_version
from service.observability.livestats import Histo, LiveStats, histogram_quantile, read_histogram
from service.observability.metrics import LATENCY_BUCKETS, Metrics
from service.settings import Settings


def histo_of(samples, bounds=LATENCY_BUCKETS) -> Histo:
    edges = tuple(bounds) + (float("inf"),)
    counts = tuple(float(np.sum(np.asarray(samples) <= b)) for b in edges)
    return Histo(edges, counts, float(np.sum(samples)), float(len(samples)))


def test_latency_buckets_resolve_p99_from_a_quarter_millisecond_to_a_second():
    assert LATENCY_BUCKETS[0] <= 0.00025 and LATENCY_BUCKETS[-1] >= 1.0
    ratios = np.array(LATENCY_BUCKETS[1:]) / np.array(LATENCY_BUCKETS[:-1])
    assert ratios.max() <= 2.0 and np.all(ratios[1:] <= 1.5), ratios


@pytest.mark.parametrize("scale", [0.0004, 0.003, 0.02, 0.15, 0.6])
def test_quantiles_from_buckets_stay_within_one_bucket_step_of_the_true_ones(scale):
    rng = np.random.default_rng(7)
    samples = np.clip(rng.lognormal(np.log(scale), 0.35, size=20_000), 0.00026, 0.99)
    h = histo_of(samples)
    for q in (0.5, 0.95, 0.99):
        true = float(np.quantile(samples, q))
        estimate = histogram_quantile(q, h)
        assert true / 1.5 <= estimate <= true * 1.5, (q, true, estimate)


def test_quantile_edge_cases_follow_promql():
    assert histogram_quantile(0.99, Histo((), ())) is None
    assert histogram_quantile(0.5, histo_of([])) is None
    # Everything above the last finite bound: PromQL answers that bound.
    assert histogram_quantile(0.99, histo_of([5.0, 6.0])) == LATENCY_BUCKETS[-1]
    # Linear inside the first bucket, which starts at 0.
    assert histogram_quantile(0.5, Histo((1.0, float("inf")), (4.0, 4.0))) == pytest.approx(0.5)


def test_read_histogram_sums_the_label_sets_it_keeps():
    m = Metrics()
    m.requests.labels("/v1/rank", "POST", "200").observe(0.002)
    m.requests.labels("/v1/rank", "POST", "422").observe(0.0004)
    m.requests.labels("/health/live", "GET", "200").observe(0.5)
    h = read_histogram(m.registry.collect(), "ranker_request_duration_seconds", lambda l: l["route"] == "/v1/rank")
    assert h.count == 2 and h.sum == pytest.approx(0.0024)
    assert h.counts[-1] == 2 and h.counts[h.bounds.index(0.0005)] == 1


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_live_stats_report_only_the_last_window():
    m, clock = Metrics(), Clock()
    live = LiveStats(m.registry, window_s=10, min_gap_s=1, clock=clock)
    empty = live.summary()
    assert empty["requests_per_s"] == 0 and empty["latency_ms"]["p99"] is None and empty["error_rate"] is None

    # 20 slow requests (100 ms), some failing, then 10 s later 30 fast ones (1 ms), none failing.
    for i in range(20):
        m.requests.labels("/v1/rank", "POST", "422" if i < 5 else "200").observe(0.1)
        m.candidates.observe(100)
    m.errors.labels("invalid_request").inc(5)
    clock.t += 5
    first = live.summary()
    assert first["requests_per_s"] == pytest.approx(20 / 5)
    assert 50 < first["latency_ms"]["p50"] <= 100 and first["error_rate"] == pytest.approx(0.25)
    assert first["candidates_per_request"] == pytest.approx(100)
    assert first["errors_per_s"] == {"invalid_request": pytest.approx(1.0)}

    clock.t += 10
    live.summary()  # the snapshot that closes the slow period
    for _ in range(30):
        m.requests.labels("/v1/rank", "POST", "200").observe(0.001)
        m.candidates.observe(10)
    clock.t += 5
    later = live.summary()
    # The window starts at the newest snapshot that is at least 10 s old: the one taken at +5 s,
    # after the slow requests.
    assert later["window_s"] == pytest.approx(15)
    assert later["requests_per_s"] == pytest.approx(30 / 15)
    assert 0.5 < later["latency_ms"]["p99"] <= 1.0  # the slow requests left the window
    assert later["error_rate"] == 0 and later["errors_per_s"] == {}
    assert later["candidates_per_request"] == pytest.approx(10)
    assert later["requests_total"] == 50


def test_versions_are_compared_over_the_window(trained):
    """The arms of a split side by side: each version's requests, latency, errors and mean predictions."""
    m = Metrics()
    clock = [0.0]
    live = LiveStats(m.registry, window_s=30, clock=lambda: clock[0])
    v1 = load_version(trained.version_dir, Settings(device="cpu", features_dir=None))
    for seconds, ok in ((0.004, True), (0.004, True), (0.040, False), (0.004, True)):
        m.observe_version_request(v1, seconds, ok)
    m.observe_predictions(v1, {"ctr": np.array([0.1, 0.3]), "vtr": np.array([0.5, 0.5])})
    m.observe_predictions(v1, {"ctr": np.array([0.2]), "vtr": np.array([0.8])})
    clock[0] = 2.0
    [row] = live.summary()["versions"]
    assert (row["model"], row["version"]) == ("ple", 1)
    assert row["requests_per_s"] == pytest.approx(2.0) and row["error_rate"] == pytest.approx(0.25)
    assert row["mean_prediction"] == pytest.approx({"ctr": 0.2, "vtr": 0.6})
    assert row["candidates_per_s"] == pytest.approx(1.5)
    assert 3 < row["latency_ms"]["p50"] <= 5 and row["latency_ms"]["p99"] > 30
    m.forget_version(v1)  # unloaded: its series go, and so does its row
    clock[0] = 4.0
    assert live.summary()["versions"] == []
    assert "version=\"1\"" not in generate_latest(m.registry).decode()
