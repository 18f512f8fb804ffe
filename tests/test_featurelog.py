"""Serving-time feature logging to a Redis Stream (the real server): a logged impression re-encodes
to bit-identical model inputs, the record says what was answered, sampling off writes nothing, and
Redis going away drops records (counted) while ranking carries on."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from contract.features import FeatureTransform
from service.app import create_app
from service.features.featurelog import STREAM
from service.settings import Settings
from tests.conftest import REDIS_URL, wait_until


def settings(trained, url: str, prefix: str, sample: float) -> Settings:
    return Settings(models_dir=trained.models_dir, features_dir=None, redis_url=url, redis_prefix=prefix, log_sample=sample,
                    device="cpu", redis_timeout_ms=200)  # fmt: skip


def request(n: int) -> dict:
    """Values of every source: the user's own, the context, per-candidate numbers and categories, and
    candidates with nothing sent (the store or the schema's defaults fill them)."""
    return {"user": {"id": "u7", "features": {"user_watch_minutes": 12.5, "city_tier": "t3"}},
            "context": {"network": "wifi", "hour": 21},
            "candidates": [{"id": f"v{i}", "video_len": 10.0 + 7 * i,
                            "features": {"author_followers": 50 * i, "category": ("sports", "gaming", "beauty")[i % 3]} if i % 4 else {}}
                           for i in range(n)]}  # fmt: skip


def logged(prefix: str) -> list[dict]:
    client = redis.Redis.from_url(REDIS_URL)
    return [orjson.loads(fields[b"record"]) for _, fields in client.xrange(f"{prefix}{STREAM}")]


def test_a_logged_impression_re_encodes_to_exactly_what_the_model_saw(trained, redis_prefix):
    app = create_app(settings(trained, REDIS_URL, redis_prefix, 1.0))
    with TestClient(app) as client:
        mv = app.state.registry.serving("ple")
        seen = []
        run = mv.engine.run
        mv.engine.run = lambda inputs: seen.append({k: v.copy() for k, v in inputs.items()}) or run(inputs)
        try:
            answer = client.post("/v1/rank", json=request(9)).json()
        finally:
            mv.engine.run = run
        wait_until(lambda: len(logged(redis_prefix)) == 1, 10, "the record in the stream")
    (record,) = logged(redis_prefix)
    assert record["request_id"] == answer["request_id"] and len(answer["request_id"]) == 32  # made up, then answered
    assert (record["model"], record["version"], record["user_id"]) == ("ple", answer["version"], "u7")

    n = len(record["candidates"]["id"])
    encoded = FeatureTransform(mv.spec.features).encode(n, record["shared"], record["per_row"]).as_inputs()
    (inputs,) = seen
    assert encoded.keys() == inputs.keys()
    for name in inputs:  # bit for bit: the same dtype, shape and bytes
        assert encoded[name].dtype == inputs[name].dtype and encoded[name].tobytes() == inputs[name].tobytes(), name

    logged_items = record["candidates"]
    by_id = {i: (p, s) for i, p, s in zip(logged_items["id"], logged_items["position"], logged_items["score"])}
    for position, item in enumerate(answer["items"]):  # the answer's order and scores
        assert by_id[item["id"]][0] == position and by_id[item["id"]][1] == pytest.approx(item["score"], rel=1e-9)
    k = record["candidates"]["id"].index(answer["items"][0]["id"])
    for task, value in answer["items"][0]["tasks"].items():
        assert record["candidates"]["outputs"][task][k] == pytest.approx(value, rel=1e-6)


def test_sampling_off_writes_nothing_and_a_client_id_is_kept(trained, redis_prefix):
    with TestClient(create_app(settings(trained, REDIS_URL, redis_prefix, 0.0))) as client:
        assert client.post("/v1/rank", json=request(3)).status_code == 200
    assert logged(redis_prefix) == []
    with TestClient(create_app(settings(trained, REDIS_URL, redis_prefix, 1.0))) as client:
        assert client.post("/v1/rank", json={**request(3), "request_id": "mine-1"}).json()["request_id"] == "mine-1"
    assert [r["request_id"] for r in logged(redis_prefix)] == ["mine-1"]  # close() wrote what was queued


def test_redis_down_drops_records_counted_and_ranking_carries_on(trained, own_redis):
    app = create_app(settings(trained, own_redis.url, "fl:", 1.0))
    with TestClient(app) as client:
        own_redis.stop()
        for _ in range(5):
            r = client.post("/v1/rank", json=request(4))
            assert r.status_code == 200 and r.json()["degraded"]  # the feature store is down too
        dropped = lambda: sum(app.state.metrics.feature_log.labels(o)._value.get() for o in ("redis_error", "queue_full"))  # noqa: E731
        wait_until(lambda: dropped() == 5, 30, "five dropped records")
        assert app.state.metrics.feature_log.labels("written")._value.get() == 0
        start = time.perf_counter()
        assert client.post("/v1/rank", json=request(4)).status_code == 200
        assert time.perf_counter() - start < 2.0  # no request waits on the log


def test_logging_without_redis_is_refused_naming_the_setting(trained):
    with pytest.raises(ValueError, match="RANKER_REDIS_URL"):
        Settings(models_dir=trained.models_dir, log_sample=0.1)
    assert np.isclose(Settings(models_dir=trained.models_dir).log_sample, 0.0)
