"""Faults while serving: the repository changing under the service, a slow Redis.

The serving version keeps serving; each event is logged and counted in /metrics. (Redis killed and
restarted, and broken version folders, are in test_store.py, test_replicas.py, test_lifecycle.py.)
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import need_tool, wait_until

ROOT = Path(__file__).resolve().parents[1]

REQUEST = {"user": {"id": "u7"}, "candidates": [{"id": f"v{i}", "video_len": 10.0 + i} for i in range(20)]}


def settings(models, **extra) -> Settings:
    return Settings(**{"models_dir": models, "features_dir": None, "watch": "off", **extra})


def metric(client, name: str, **labels) -> float:
    """The value of one sample in /metrics (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.compile(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", re.M)
    found = pattern.search(client.get("/metrics").text)
    return float(found.group(1)) if found else 0.0


def ranks(client, version: int | None = None) -> dict:
    r = client.post("/v1/rank", json=REQUEST)
    assert r.status_code == 200, r.text
    if version is not None:
        assert r.json()["version"] == version
    return r.json()


def test_a_version_folder_deleted_while_serving_keeps_serving_logged_and_counted(repo, caplog):
    with TestClient(create_app(settings(repo, watch="auto"))) as c:
        ranks(c, version=2)
        shutil.rmtree(repo / "ple" / "2")
        with caplog.at_level(logging.WARNING, logger="ranker"):
            for _ in range(3):  # the watcher's polls: reported once, not every poll
                c.app.state.registry.watcher.poll()
        ranks(c, version=2)
        assert c.get("/health/ready").status_code == 200
        assert metric(c, "ranker_repository_events_total", event="version_vanished") == 1
        assert [r.getMessage() for r in caplog.records if "ple/2" in r.getMessage() and "deleted" in r.getMessage()]
        # An admin can still route away from it, to a version that is on disk.
        assert c.app.state.registry.load("ple", 1).state == "ready"
        assert c.app.state.registry.activate("ple", 1).active == 1
        ranks(c, version=1)


def test_the_models_directory_becoming_unreadable_while_serving(repo, caplog):
    """Unreadable: replaced by a file (chmod 000 does not stop root, which runs these tests)."""
    away = repo.parent / "models.away"
    with TestClient(create_app(settings(repo, watch="auto"))) as c:
        ranks(c, version=2)
        repo.rename(away)
        repo.write_text("not a folder any more")
        with caplog.at_level(logging.ERROR, logger="ranker"):
            c.app.state.registry.watcher.poll()
        ranks(c, version=2)
        assert c.get("/health/ready").status_code == 200
        assert metric(c, "ranker_repository_events_total", event="unreadable") >= 1
        assert metric(c, "ranker_repository_events_total", event="version_vanished") == 0
        assert any("unreadable" in r.getMessage() for r in caplog.records)
        # Back again: the watcher carries on, nothing was unloaded.
        repo.unlink()
        away.rename(repo)
        c.app.state.registry.watcher.poll()
        ranks(c, version=2)
        assert [m["version"] for m in c.get("/v1/models").json()["models"] if m["state"] == "ready"] == [2]


def test_a_slow_redis_degrades_requests_within_the_timeout(trained, own_redis):
    timeout_ms = 50
    app = create_app(settings(trained.models_dir, redis_url=own_redis.url, redis_timeout_ms=timeout_ms))
    with TestClient(app) as c:
        assert ranks(c)["degraded"] is False
        sleeper = subprocess.Popen(["redis-cli", "-p", str(own_redis.port), "DEBUG", "SLEEP", "2"],
                                   stdout=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(0.2)  # DEBUG SLEEP has started: Redis answers nothing for 2 s
            timings, degraded = [], []
            for _ in range(10):
                t = time.monotonic()
                body = ranks(c)
                timings.append(time.monotonic() - t)
                degraded.append(body["degraded"])
            asleep = sleeper.poll() is None  # redis-cli returns when DEBUG SLEEP ends
        finally:
            sleeper.wait(timeout=10)
        assert asleep, "the requests took so long that Redis may have woken: the test proves nothing"
        assert all(degraded), degraded
        # Each answer within the feature timeout plus a margin for a shared, noisy 2-core machine;
        # far below the 2 s Redis stays silent.
        assert max(timings) < timeout_ms / 1000 + 0.4, timings
        assert metric(c, "ranker_degraded_requests_total", reason="feature_store") >= 10
        # Redis awake again: requests recover without a restart (after the store's back-off).
        wait_until(lambda: not ranks(c)["degraded"], timeout=15, what="features from Redis again")


def test_broken_rows_in_redis_degrade_to_defaults_never_a_500_or_a_client_error(trained, redis_prefix, caplog):
    import orjson
    import redis

    from tests.conftest import REDIS_URL

    client = redis.Redis.from_url(REDIS_URL)
    good = {"category": "music", "video_len": 12.0, "author_followers": 500}
    client.set(f"{redis_prefix}feat:user:u7", b"not json")
    client.set(f"{redis_prefix}feat:item:v1", b"[1, 2]")
    client.set(f"{redis_prefix}feat:item:v2", orjson.dumps({"category": {"a": 1}, "video_len": 20.0}))
    client.set(f"{redis_prefix}feat:item:v3", orjson.dumps({"video_len": "abc", "author_followers": "many"}))
    client.set(f"{redis_prefix}feat:item:v4", orjson.dumps(good))
    request = {"user": {"id": "u7"}, "candidates": [{"id": f"v{i}"} for i in range(1, 5)]}
    app = create_app(settings(trained.models_dir, redis_url=REDIS_URL, redis_prefix=redis_prefix))
    with TestClient(app) as c, caplog.at_level(logging.WARNING, logger="ranker"):
        r = c.post("/v1/rank", json=request)
        assert r.status_code == 200, r.text
        # The broken row and the broken values took their defaults; the good row was used as stored.
        client.set(f"{redis_prefix}feat:item:v1", orjson.dumps(good))
        client.set(f"{redis_prefix}feat:item:v3", orjson.dumps(good))
        fixed = c.post("/v1/rank", json=request).json()
        assert r.json()["features_defaulted"] > fixed["features_defaulted"]
        tasks = {i["id"]: i["tasks"] for i in r.json()["items"]}
        assert tasks["v4"] == {i["id"]: i["tasks"] for i in fixed["items"]}["v4"]
        assert metric(c, "ranker_degraded_requests_total", reason="feature_store_row") == 2  # the user row, each time
        assert metric(c, "ranker_degraded_requests_total", reason="feature_store_value") == 1  # v3's number
        assert "corrupt rows" in caplog.text and "feature store value not usable" in caplog.text
        # The same values sent by the client are the client's mistake: 422 naming the field.
        sent = {"user": {"id": "u7"}, "candidates": [{"id": "v4", "features": {"author_followers": "many"}}]}
        r = c.post("/v1/rank", json=sent)
        assert r.status_code == 422 and r.json()["error"]["field"] == "candidates[0].features.author_followers"


def test_redis_down_serves_default_lengths_instead_of_blaming_the_client(trained, own_redis):
    app = create_app(settings(trained.models_dir, redis_url=own_redis.url, redis_timeout_ms=50))
    with TestClient(app) as c:
        own_redis.stop()
        r = c.post("/v1/rank", json={"user": {"id": "u7"}, "candidates": [{"id": "v1"}, {"id": "v2", "video_len": 9.0}]})
        assert r.status_code == 200, r.text
        assert r.json()["degraded"] is True and r.json()["features_defaulted"] > 0


def test_a_bug_answers_500_in_the_error_shape_and_keeps_the_connection(trained, caplog):
    import httpx

    from tests.conftest import live_server

    app = create_app(settings(trained.models_dir))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        wait_until(lambda: client.get("/health/ready").status_code == 200, timeout=30, what="ready")

        def broken(*args, **kwargs):
            raise RuntimeError("a bug")

        app.state.ranker.rank = broken
        with caplog.at_level(logging.ERROR, logger="ranker"):
            answers = [client.post("/v1/rank", json=REQUEST) for _ in range(3)]  # one keep-alive connection
        assert [r.status_code for r in answers] == [500, 500, 500]  # (the connection used to be reset after one)
        assert answers[0].json() == {"error": {"code": "internal", "message": "internal error; see the service log",
                                               "field": None}}  # fmt: skip
        assert "unhandled error on POST /v1/rank" in caplog.text and "a bug" in caplog.text
        assert metric(client, "ranker_errors_total", kind="internal") == 3


PERMISSION_CHECK = """
import json, logging, os, sys, time
from pathlib import Path
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings
repo = Path(sys.argv[1])
logging.basicConfig(level=logging.WARNING, format="%(message)s")
app = create_app(Settings(models_dir=repo, features_dir=None, watch="auto", watch_interval_s=0.2, admin_token="t"))
with TestClient(app) as c:
    os.chmod(repo, 0)
    try:
        time.sleep(1.0)  # several polls of the watcher
        load = c.post("/v1/admin/models/ple/versions/1/load", headers={"Authorization": "Bearer t"})
        rank = c.post("/v1/rank", json={"user": {"id": "u"}, "candidates": [{"id": "a", "video_len": 3.0}]})
    finally:
        os.chmod(repo, 0o755)
    print(json.dumps({"load": [load.status_code, load.json()["error"]["code"]], "rank": rank.status_code}))
"""


def test_a_models_directory_without_permission_is_a_503_for_loads_and_one_log_line(repo):
    """chmod 000 as the service's user: root ignores it, so the check runs without root's override."""
    command = [sys.executable, "-c", PERMISSION_CHECK, str(repo)]
    if os.geteuid() == 0:
        setpriv = need_tool("setpriv", "util-linux")
        drop = "-dac_override,-dac_read_search"
        command = [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}", *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"load": [503, "repository_unreadable"], "rank": 200}
    assert out.stderr.count("unreadable") == 1, out.stderr[-3000:]  # once, not at every poll
    assert "Traceback" not in out.stderr
