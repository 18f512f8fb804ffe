"""Several ranker-serve processes on one real Redis: they agree on versions, and survive Redis faults."""

import time

import httpx
import pytest
import redis

from service.features.store import RedisStore, redis_client
from tests.conftest import REDIS_URL, serve_process

TOKEN = "replica-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REQUEST = {"user": {"id": "u1"}, "candidates": [{"id": "v1", "video_len": 30.0}, {"id": "v2", "video_len": 9.0}]}


def routing(url):
    rows = httpx.get(f"{url}/v1/models", timeout=5).json()["models"]
    return {m["version"]: m["traffic_share"] for m in rows if m["traffic_share"] > 0}


def wait_for(check, timeout):
    """Seconds until check() holds (fails past timeout)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not reached within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.mark.slow
def test_replicas_agree_within_a_second(repo, redis_prefix):
    env = {"RANKER_REDIS_URL": REDIS_URL, "RANKER_REDIS_PREFIX": redis_prefix, "RANKER_ADMIN_TOKEN": TOKEN,
           "RANKER_WATCH": "off"}  # fmt: skip
    with serve_process(repo, env) as a, serve_process(repo, env) as b:
        assert routing(a) == routing(b) == {2: 1.0}
        r = httpx.post(f"{a}/v1/admin/models/ple/versions/1/load", headers=AUTH)
        assert r.status_code == 200
        assert httpx.post(f"{a}/v1/admin/models/ple/activate", json={"version": 1}, headers=AUTH).status_code == 200
        assert routing(a) == {1: 1.0}
        lag = wait_for(lambda: routing(b) == {1: 1.0}, timeout=1.0)  # b loads version 1 itself
        assert httpx.post(f"{b}/v1/rank", json=REQUEST).json()["version"] == 1

        r = httpx.put(f"{b}/v1/admin/models/ple/split", json={"weights": {"1": 0.25, "2": 0.75}}, headers=AUTH)
        assert r.status_code == 200
        wait_for(lambda: routing(a) == {1: 0.25, 2: 0.75}, timeout=1.0)
        keys = redis.Redis.from_url(REDIS_URL)
        assert keys.get(f"{redis_prefix}model:ple:active") == b"2"
        assert keys.get(f"{redis_prefix}model:ple:split") is not None

        with serve_process(repo, env) as c:  # a replica that starts later reads the keys
            assert routing(c) == {1: 0.25, 2: 0.75}
            user = {"id": "sticky-user"}
            versions = {httpx.post(f"{u}/v1/rank", json={**REQUEST, "user": user}).json()["version"] for u in (a, b, c)}
            assert len(versions) == 1  # the same user lands in the same arm on every replica

        assert httpx.post(f"{a}/v1/admin/models/ple/rollback", headers=AUTH).json()["active"] == 1
        wait_for(lambda: routing(b) == {1: 1.0}, timeout=1.0)
    print(f"replica lag after activate: {lag * 1000:.0f} ms")


def loaded(url):
    return {m["version"] for m in httpx.get(f"{url}/v1/models", timeout=5).json()["models"]}


@pytest.mark.slow
def test_an_unload_reaches_every_replica(repo, redis_prefix):
    """Worker processes share one port, so an admin cannot aim an unload at each: the replica
    that answers it announces it, and the others drop their copy (not one that serves there)."""
    env = {"RANKER_REDIS_URL": REDIS_URL, "RANKER_REDIS_PREFIX": redis_prefix, "RANKER_ADMIN_TOKEN": TOKEN,
           "RANKER_WATCH": "off"}  # fmt: skip
    with serve_process(repo, env) as a, serve_process(repo, env) as b:
        for url in (a, b):
            assert httpx.post(f"{url}/v1/admin/models/ple/versions/1/load", headers=AUTH).status_code == 200
        assert loaded(a) == loaded(b) == {1, 2}
        assert httpx.delete(f"{a}/v1/admin/models/ple/versions/1", headers=AUTH).status_code == 200
        assert loaded(a) == {2}
        wait_for(lambda: loaded(b) == {2}, timeout=2.0)
        # An announcement naming a version that serves is ignored (channel order: 2, then 1).
        assert httpx.post(f"{b}/v1/admin/models/ple/versions/1/load", headers=AUTH).status_code == 200
        channel = redis.Redis.from_url(REDIS_URL)
        channel.publish(f"{redis_prefix}events", b'{"model": "ple", "unload": 2}')
        channel.publish(f"{redis_prefix}events", b'{"model": "ple", "unload": 1}')
        wait_for(lambda: loaded(b) == {2}, timeout=2.0)
        assert httpx.post(f"{b}/v1/rank", json=REQUEST).json()["version"] == 2


@pytest.mark.slow
def test_redis_outage_degrades_requests_and_recovers_without_restart(repo, own_redis):
    RedisStore(redis_client(own_redis.url, 1.0)).put("item", [("v1", {"category": "music", "video_len": 30.0})])
    env = {"RANKER_REDIS_URL": own_redis.url, "RANKER_ADMIN_TOKEN": TOKEN, "RANKER_WATCH": "off",
           "RANKER_REDIS_TIMEOUT_MS": "20", "RANKER_CONTROL_RESYNC_S": "0.5"}  # fmt: skip
    with serve_process(repo, env) as url:
        client = httpx.Client(base_url=url, timeout=5)
        assert client.post("/v1/rank", json=REQUEST).json()["degraded"] is False
        own_redis.stop()
        answers = [client.post("/v1/rank", json=REQUEST) for _ in range(30)]
        assert all(r.status_code == 200 for r in answers)
        assert all(r.json()["degraded"] for r in answers)
        r = client.post("/v1/admin/models/ple/activate", json={"version": 2}, headers=AUTH)
        assert r.status_code == 503 and r.json()["error"]["code"] == "control_unavailable"
        metrics = client.get("/metrics").text
        assert 'ranker_degraded_requests_total{reason="feature_store"} 30.0' in metrics

        own_redis.start()  # back, empty (it keeps nothing on disk)
        wait_for(lambda: client.post("/v1/rank", json=REQUEST).json()["degraded"] is False, timeout=5)
        # The control listener reconnected: a change written straight into Redis is applied.
        assert client.post("/v1/admin/models/ple/versions/1/load", headers=AUTH).status_code == 200
        direct = redis.Redis.from_url(own_redis.url)
        direct.set("ranker:model:ple:active", 1)
        direct.publish("ranker:events", b'{"model": "ple"}')
        wait_for(lambda: routing(url) == {1: 1.0}, timeout=3)
        client.close()


def test_a_version_unloaded_elsewhere_while_it_serves_here_is_dropped_once_routing_moves_off(repo):
    """A worker still routing to a version when another unloads it (it loads the new one in the
    background) must not keep that version for ever: every rollout would leave one behind."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(models_dir=repo, features_dir=None, watch="off", admin_token=TOKEN))
    with TestClient(app) as c:  # version 2 serves
        registry = app.state.registry
        assert c.post("/v1/admin/models/ple/versions/1/load", headers=AUTH).status_code == 200
        registry.drop_unloaded_elsewhere("ple", 2)  # announced by another worker while 2 serves here
        assert registry.handle("ple", 2) is not None
        assert c.post("/v1/admin/models/ple/activate", json={"version": 1}, headers=AUTH).status_code == 200
        assert registry.handle("ple", 2) is None and [v.version for v in registry.describe("ple")] == [1]
