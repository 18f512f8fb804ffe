"""The control plane against garbage and lost state, on the real Redis: what no replica wrote (in its
keys, its history or its channel) is ignored, logged and counted; replicas keep serving and keep
converging; an admin change repairs it; a rollback that cannot be served changes nothing."""

from __future__ import annotations

import json
import shutil

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.lifecycle.control import RedisControl
from service.lifecycle.routing import RoutingState
from service.settings import Settings
from tests.conftest import REDIS_URL, wait_until

TOKEN = "control-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REQUEST = {"user": {"id": "u1"}, "candidates": [{"id": "v1", "video_len": 30.0}, {"id": "v2", "video_len": 9.0}]}


@pytest.fixture
def keys(redis_prefix):
    client = redis.Redis.from_url(REDIS_URL)
    yield lambda part: f"{redis_prefix}model:ple:{part}", client
    client.close()


def app_for(repo, prefix: str, **extra):
    settings = {"models_dir": repo, "features_dir": None, "watch": "off", "redis_url": REDIS_URL,
                "redis_prefix": prefix, "admin_token": TOKEN, "control_resync_s": 0.2, **extra}  # fmt: skip
    return create_app(Settings(**settings))


def routes(client) -> dict[int, float]:
    return {m["version"]: m["traffic_share"] for m in client.get("/v1/models").json()["models"] if m["traffic_share"] > 0}


def activate(client, version: int) -> None:
    """Load (if need be) and activate a version through the admin API."""
    assert client.post(f"/v1/admin/models/ple/versions/{version}/load", headers=AUTH).status_code == 200
    answer = client.post("/v1/admin/models/ple/activate", json={"version": version}, headers=AUTH)
    assert answer.status_code == 200, answer.text


def events(client, event: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'ranker_control_events_total{{event="{event}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_garbage_on_the_channel_is_ignored_and_the_replica_keeps_converging(repo, redis_prefix, keys):
    _, r = keys
    with TestClient(app_for(repo, redis_prefix)) as c:
        assert routes(c) == {2: 1.0}
        for garbage in (b"hello world", b'{"x": 1}', b"[1]", b'{"model": 7}', b"\xff\xfe"):
            r.publish(f"{redis_prefix}events", garbage)
        # Another replica's change, announced on the same channel after the garbage.
        RedisControl(redis.Redis.from_url(REDIS_URL), redis_prefix).write("ple", RoutingState(1))
        wait_until(lambda: routes(c) == {1: 1.0}, timeout=10, what="the change after the garbage applied")
        assert events(c, "bad_message") == 5 and events(c, "listener_error") == 0
        assert c.post("/v1/rank", json=REQUEST).json()["version"] == 1


@pytest.mark.parametrize(
    "active, split",
    [
        (b"abc", None),
        (b"2.5", None),
        (b"9" * 5000, None),
        (b"99999999999999999999999999999", None),
        (b"2", b"not json"),
        (b"2", b"[1, 2]"),
        (b"2", b'{"abc": 1}'),
        (b"2", b'{"1": -1}'),  # a negative share
        (b"2", b'{"3": 1}'),  # a split without the active version
    ],
)
def test_garbage_in_the_control_keys_is_ignored_and_an_admin_change_repairs_it(repo, redis_prefix, keys, active, split):
    key, r = keys
    r.set(key("active"), active)
    if split is not None:
        r.set(key("split"), split)
    with TestClient(app_for(repo, redis_prefix)) as c:  # a replica starting on garbage starts
        assert routes(c) == {2: 1.0}  # the newest version, as with no state at all
        assert c.post("/v1/rank", json=REQUEST).status_code == 200
        for path in ("/v2/models/ple", "/v2/models/ple/ready", "/v1/models"):
            assert c.get(path).status_code == 200, path
        assert r.get(key("active")) == active  # not overwritten by a replica: it is the admin's to fix
        wait_until(lambda: events(c, "corrupt_state") >= 1, timeout=5, what="the garbage counted")
        assert events(c, "corrupt_state") == 1  # logged and counted once, not at every resync
        activate(c, 1)
        assert r.get(key("active")) == b"1" and r.get(key("split")) is None
        assert routes(c) == {1: 1.0}


def test_a_rollback_that_cannot_be_served_changes_nothing(repo, redis_prefix, keys):
    key, r = keys
    with TestClient(app_for(repo, redis_prefix)) as c:
        activate(c, 1)
        activate(c, 2)
        history = r.lrange(key("history"), 0, -1)  # [{active: 1}, {active: 2}]
        assert c.delete("/v1/admin/models/ple/versions/1", headers=AUTH).status_code == 200
        shutil.rmtree(repo / "ple" / "1")
        answer = c.post("/v1/admin/models/ple/rollback", headers=AUTH)
        assert answer.status_code == 409 and answer.json()["error"]["code"] == "rollback_failed"
        assert r.get(key("active")) == b"2" and r.lrange(key("history"), 0, -1) == history
        assert routes(c) == {2: 1.0}


def test_garbage_in_the_history_is_skipped_or_replaced(repo, redis_prefix, keys):
    key, r = keys
    with TestClient(app_for(repo, redis_prefix)) as c:
        activate(c, 1)
        r.lpush(key("history"), b"garbage", json.dumps({"active": "x", "split": None}))
        answer = c.post("/v1/admin/models/ple/rollback", headers=AUTH)  # past both, to {active: 2}
        assert answer.status_code == 200 and answer.json()["active"] == 2, answer.text
        assert r.llen(key("history")) == 0 and events(c, "corrupt_history") == 2

        r.set(key("history"), b"not a list")  # the wrong type: every change used to be a 503
        activate(c, 1)
        assert r.type(key("history")) == b"list" and r.get(key("active")) == b"1"
        assert events(c, "corrupt_history") == 3


def test_keys_lost_with_redis_are_restored_from_the_replicas_routing(repo, redis_prefix, keys):
    key, r = keys
    with TestClient(app_for(repo, redis_prefix)) as c:
        activate(c, 1)
        r.delete(key("active"), key("split"), key("history"))  # Redis restarted with nothing on disk
        wait_until(lambda: r.get(key("active")) == b"1", timeout=5, what="the keys restored")
        assert events(c, "keys_restored") == 1 and routes(c) == {1: 1.0}
    # A replica that starts now follows the admin's choice, not the newest version.
    with TestClient(app_for(repo, redis_prefix)) as late:
        assert routes(late) == {1: 1.0}


def test_a_new_version_waits_for_the_control_plane_instead_of_routing_one_replica(repo, own_redis, trained):
    settings = Settings(models_dir=repo, features_dir=None, watch="auto", watch_interval_s=0.2, redis_url=own_redis.url,
                        redis_prefix="w:", control_resync_s=0.2)  # fmt: skip
    with TestClient(create_app(settings)) as c:
        assert routes(c) == {2: 1.0}
        own_redis.stop()
        new = repo / "ple" / "3"
        shutil.copytree(repo / "ple" / "2", new)
        spec = json.loads((new / "model.json").read_text())
        (new / "model.json").write_text(json.dumps({**spec, "version": 3}))
        wait_until(lambda: any(m["version"] == 3 and m["state"] == "ready" for m in c.get("/v1/models").json()["models"]),
                   timeout=20, what="version 3 loaded")  # fmt: skip
        assert routes(c) == {2: 1.0}  # loaded, not routed: the other replicas could not follow
        own_redis.start()
        wait_until(lambda: routes(c) == {3: 1.0}, timeout=20, what="routing to 3 once Redis is back")
        assert redis.Redis.from_url(own_redis.url).get("w:model:ple:active") == b"3"


def test_split_shares_are_stored_exactly_and_older_replicas_floats_still_read(repo, redis_prefix, keys):
    key, r = keys
    # What a replica before exact shares wrote for {"1": 0.9, "2": 0.1}.
    r.set(key("active"), b"1")
    r.set(key("split"), b'{"1": 0.8999999999999999, "2": 0.1}')
    with TestClient(app_for(repo, redis_prefix)) as c:
        assert routes(c) == {1: 0.9, 2: 0.1}
        answer = c.put("/v1/admin/models/ple/split", json={"weights": {"1": 0.7, "2": 0.2, "3": 0.1}}, headers=AUTH)
        assert answer.status_code == 404  # version 3 does not exist; nothing written
        answer = c.put("/v1/admin/models/ple/split", json={"weights": {"1": 2, "2": 1}}, headers=AUTH)
        assert answer.status_code == 200 and answer.json()["split"] == {"1": 0.6667, "2": 0.3333}
        stored = json.loads(r.get(key("split")))
        assert stored == {"1": 0.6667, "2": 0.3333}
        assert abs(sum(stored.values()) - 1.0) < 1e-9  # an older replica takes it as written (its own check)
        history = json.loads(r.lindex(key("history"), 0))
        assert history == {"active": 1, "split": {"1": 0.9, "2": 0.1}}
