"""/metrics and the dashboard's data route, in process (the real-process checks are in test_monitoring_stack.py)."""

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.settings import Settings

# The families the original contract's Monitoring section and issue 7 ask for, with their types (docs/monitoring.md
# lists every family; tests/test_docs.py checks that list against service/observability/metrics.py).
FAMILIES = {
    "ranker_request_duration_seconds": "histogram",
    "ranker_inference_duration_seconds": "histogram",
    "ranker_candidates_per_request": "histogram",
    "ranker_feature_store_duration_seconds": "histogram",
    "ranker_feature_store_misses": "counter",
    "ranker_errors": "counter",
    "ranker_degraded_requests": "counter",
    "ranker_model_loads": "counter",
    "ranker_model_load_duration_seconds": "histogram",
    "ranker_model_swaps": "counter",
    "ranker_model_active_version": "gauge",
    "ranker_model_traffic_share": "gauge",
    "ranker_requests_in_flight": "gauge",
    # issue 16: per version, to compare the arms of a split
    "ranker_version_request_duration_seconds": "histogram",
    "ranker_scored_candidates": "counter",
    "ranker_predicted_value": "counter",
}


@pytest.fixture(scope="module")
def client(trained):
    with TestClient(create_app(Settings(models_dir=trained.models_dir, features_dir=trained.features_dir))) as c:
        yield c


def rank_body(n: int, user: str = "u1") -> dict:
    # Ids past the simulator's 400 videos are unknown to the store: feature-store misses.
    return {"user": {"id": user}, "candidates": [{"id": f"v{i}", "video_len": 30.0} for i in range(390, 390 + n)]}


def scrape(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def sample(families, name: str, **labels) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
    return sum(s.value for f in families.values() for s in f.samples
               if s.name == name and labels.items() <= s.labels.items())  # fmt: skip


def test_metrics_show_every_family_after_traffic(client, trained):
    before = scrape(client)
    for n in (1, 20, 20):
        assert client.post("/v1/rank", json=rank_body(n)).status_code == 200
    assert client.post("/v1/rank", json={"user": {"id": "u1"}, "candidates": []}).status_code == 422
    after = scrape(client)
    assert {name: after[name].type for name in FAMILIES if name in after} == FAMILIES

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("ranker_request_duration_seconds_count", route="/v1/rank", method="POST", status="200") == 3
    assert delta("ranker_candidates_per_request_sum") == 41
    cpu = {"model": "ple", "version": "1", "provider": "CPUExecutionProvider"}
    assert sample(after, "ranker_inference_duration_seconds_count", **cpu) >= 3
    assert sample(after, "ranker_feature_store_misses_total") >= 10  # v400.. are unknown
    assert sample(after, "ranker_errors_total", kind="invalid_request") >= 1
    assert sample(after, "ranker_model_loads_total", model="ple", result="ok") == 1
    assert sample(after, "ranker_model_load_duration_seconds_count", model="ple") == 1
    assert sample(after, "ranker_model_active_version", model="ple") == 1
    assert sample(after, "ranker_model_traffic_share", model="ple", version="1") == 1.0
    # The scrape itself is in flight while /metrics renders.
    assert sample(after, "ranker_requests_in_flight") == 1


def test_dashboard_page_and_its_data(client):
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'fetch("dashboard/data"' in page.text and "<script src" not in page.text  # self-contained

    first = client.get("/dashboard/data").json()
    for n in (10, 30):
        client.post("/v1/rank", json=rank_body(n, user="u2"))
    client.post("/v1/rank", json={"user": {"id": "u2"}, "candidates": [{"id": "v1", "video_len": -1}]})
    data = client.get("/dashboard/data").json()
    assert data["requests_total"] == first["requests_total"] + 3
    assert data["requests_per_s"] > 0 and 0 < data["error_rate"] < 1
    assert 0 < data["latency_ms"]["p50"] <= data["latency_ms"]["p95"] <= data["latency_ms"]["p99"] <= 1000
    assert data["inference_ms"]["p99"] > 0 and data["candidates_per_request"] > 1
    models = [(m["name"], m["version"], m["active"], m["traffic_share"]) for m in data["models"]]
    assert models == [("ple", 1, True, 1.0)]
    [version] = data["versions"]  # the arm of each version: here the only one
    assert (version["model"], version["version"]) == ("ple", 1) and version["requests_per_s"] > 0
    assert version["error_rate"] == 0  # the 422 above failed validation before any version was chosen
    assert 0 < version["latency_ms"]["p50"] <= version["latency_ms"]["p99"]
    assert 0 < version["inference_ms"]["p50"] <= version["inference_ms"]["p99"] <= version["latency_ms"]["p99"]
    assert set(version["mean_prediction"]) == {"ctr", "vtr", "vcr", "shr", "cmr"}
    assert all(0 < p < 1 for p in version["mean_prediction"].values()), version


def test_unhandled_errors_and_early_rejections_are_counted_under_their_route(trained):
    settings = Settings(models_dir=trained.models_dir, features_dir=trained.features_dir, max_body_bytes=2000)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as c:

        def broken(*args, **kwargs):
            raise RuntimeError("a bug")

        app.state.ranker.rank = broken
        assert c.post("/v1/rank", json=rank_body(3)).status_code == 500
        assert c.post("/v1/rank", json=rank_body(100)).status_code == 413  # answered before routing
        after = scrape(c)
    assert sample(after, "ranker_errors_total", kind="internal") == 1
    assert sample(after, "ranker_errors_total", kind="body_too_large") == 1
    assert sample(after, "ranker_request_duration_seconds_count", route="/v1/rank", status="500") == 1
    assert sample(after, "ranker_request_duration_seconds_count", route="/v1/rank", status="413") == 1
    assert sample(after, "ranker_request_duration_seconds_count", route="unmatched") == 0
