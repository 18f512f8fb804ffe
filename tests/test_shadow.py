"""Shadow versions: a version that takes no traffic scores sampled requests off the request path and
is compared with the served answer; replicas follow the setting through the real Redis."""

import re
import threading

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.ranking.shadow import spearman, top_overlap
from service.settings import Settings
from tests.conftest import REDIS_URL, copy_version, wait_until

TOKEN = "shadow-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REQUEST = {"user": {"id": "u7"}, "candidates": [{"id": f"v{i}", "video_len": 10.0} for i in range(30)]}


def app_for(models, **settings):
    return create_app(Settings(models_dir=models, features_dir=None, watch="off", admin_token=TOKEN, **settings))


def sample(client, name: str, **labels) -> float:
    """One sample of /metrics (0 when absent); labels in the order the metric declares them."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", client.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def outcomes(client, outcome: str) -> float:
    return sample(client, "ranker_shadow_requests_total", model="ple", outcome=outcome)


def shadow_row(client, version: int):
    rows = [m for m in client.get("/v1/models").json()["models"] if m["version"] == version]
    return rows[0].get("shadow_sample") if rows else None  # None: not loaded there, or no shadow


def test_a_shadow_scores_sampled_requests_and_reports_its_distance_from_the_served_answer(repo):
    copy_version(repo, 2, 3)  # the serving weights under another number: a shadow that agrees exactly
    with TestClient(app_for(repo)) as c:
        served_before = c.post("/v1/rank", json=REQUEST).json()
        assert served_before["version"] == 3
        for v in (1, 2):
            assert c.post(f"/v1/admin/models/ple/versions/{v}/load", headers=AUTH).status_code == 200

        r = c.put("/v1/admin/models/ple/shadow", json={"version": 1, "sample": 1.0}, headers=AUTH)
        assert r.status_code == 200 and r.json() == {"model": "ple", "shadow": {"version": 1, "sample": 1.0}}
        assert shadow_row(c, 1) == 1.0 and shadow_row(c, 3) is None
        for _ in range(5):
            answer = c.post("/v1/rank", json=REQUEST).json()
            assert answer["version"] == 3 and answer["items"] == served_before["items"]  # the client sees no change
        wait_until(lambda: outcomes(c, "scored") == 5, 10, "five shadow comparisons")
        pair = {"model": "ple", "serving": "3", "shadow": "1"}
        assert sample(c, "ranker_shadow_top10_overlap_count", **pair) == 5
        correlation = sample(c, "ranker_shadow_rank_correlation_sum", **pair) / 5
        assert -1 <= correlation < 0.999  # another seed: another order
        for task in ("ctr", "vtr", "vcr", "shr", "cmr"):
            assert sample(c, "ranker_shadow_abs_difference_sum", **pair, task=task) > 0
        assert sample(c, "ranker_shadow_inference_duration_seconds_count", model="ple", version="1") == 5

        # The same weights as the serving version: full agreement.
        assert c.put("/v1/admin/models/ple/shadow", json={"version": 2}, headers=AUTH).json()["shadow"]["sample"] == 1.0
        for _ in range(3):
            c.post("/v1/rank", json=REQUEST)
        wait_until(lambda: outcomes(c, "scored") == 8, 10, "three more comparisons")
        same = {"model": "ple", "serving": "3", "shadow": "2"}
        assert sample(c, "ranker_shadow_top10_overlap_sum", **same) == 3.0
        assert sample(c, "ranker_shadow_rank_correlation_sum", **same) == pytest.approx(3.0)
        assert sample(c, "ranker_shadow_abs_difference_sum", **same, task="ctr") == 0.0
        shadows = {(s["serving"], s["shadow"]): s for s in c.get("/dashboard/data").json()["shadows"]}
        assert shadows[(3, 2)]["top10_overlap"] == 1.0 and shadows[(3, 2)]["rank_correlation"] == pytest.approx(1.0)
        assert shadows[(3, 2)]["abs_difference"]["ctr"] == 0.0 and shadows[(3, 1)]["rank_correlation"] < 0.999

        assert c.delete("/v1/admin/models/ple/shadow", headers=AUTH).json() == {"model": "ple", "shadow": None}
        assert shadow_row(c, 2) is None
        c.post("/v1/rank", json=REQUEST)
        assert outcomes(c, "scored") == 8


def test_a_shadow_samples_its_share_of_requests(repo):
    with TestClient(app_for(repo)) as c:
        c.post("/v1/admin/models/ple/versions/1/load", headers=AUTH)
        c.put("/v1/admin/models/ple/shadow", json={"version": 1, "sample": 0.25}, headers=AUTH)
        for _ in range(200):
            c.post("/v1/rank", json={**REQUEST, "candidates": REQUEST["candidates"][:3]})
        wait_until(lambda: outcomes(c, "scored") + outcomes(c, "queue_full") > 0, 10, "a comparison")
        taken = outcomes(c, "scored") + outcomes(c, "queue_full")
        assert 20 <= taken <= 85  # 50 expected; binomial sd 6


def test_a_slow_or_failing_shadow_never_delays_or_fails_a_request_and_a_full_queue_is_counted(repo):
    with TestClient(app_for(repo, shadow_queue=2)) as c:
        c.post("/v1/admin/models/ple/versions/1/load", headers=AUTH)
        shadow = c.app.state.registry.handle("ple", 1)
        release, run = threading.Event(), shadow.engine.run_background

        def stuck(inputs):
            release.wait(30)
            return run(inputs)

        shadow.engine.run_background = stuck
        c.put("/v1/admin/models/ple/shadow", json={"version": 1, "sample": 1.0}, headers=AUTH)
        answers = []
        sender = threading.Thread(target=lambda: answers.extend(c.post("/v1/rank", json=REQUEST) for _ in range(6)))
        sender.start()
        sender.join(20)  # the shadow is stuck: requests that waited for it would not be back
        assert not sender.is_alive() and [a.status_code for a in answers] == [200] * 6
        assert outcomes(c, "queue_full") >= 3  # one job in the worker, two queued, the rest skipped
        release.set()
        wait_until(lambda: outcomes(c, "scored") == 6 - outcomes(c, "queue_full"), 10, "the queued comparisons")

        def broken(inputs):
            raise RuntimeError("shadow engine down")

        shadow.engine.run_background = broken
        assert [c.post("/v1/rank", json=REQUEST).status_code for _ in range(3)] == [200] * 3
        wait_until(lambda: outcomes(c, "failed") == 3, 10, "three failed shadows")

        shadow.engine.run_background = run
        assert c.delete("/v1/admin/models/ple/versions/1", headers=AUTH).status_code == 200  # the shadow unloaded
        assert c.post("/v1/rank", json=REQUEST).status_code == 200
        assert outcomes(c, "not_loaded") == 1


def test_the_shadow_admin_call_names_what_is_wrong(repo):
    with TestClient(app_for(repo)) as c:
        def put(body, headers=AUTH):
            r = c.put("/v1/admin/models/ple/shadow", json=body, headers=headers)
            return r.status_code, r.json()["error"]["code"], r.json()["error"].get("field")

        assert put({"version": 1}) == (404, "version_not_found", "version")  # on disk, not loaded
        assert put({"version": 2}) == (409, "version_serving", "version")
        assert put({"version": 1, "sample": 0})[::2] == (422, "sample")
        assert put({"version": 1, "sample": 1.5})[::2] == (422, "sample")
        assert put({"version": 1}, headers={})[:2] == (401, "unauthorized")
        r = c.put("/v1/admin/models/nope/shadow", json={"version": 1}, headers=AUTH)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")


def test_replicas_follow_the_shadow_setting_through_redis(repo, redis_prefix):
    settings = {"redis_url": REDIS_URL, "redis_prefix": redis_prefix, "feature_store": "embedded", "control_resync_s": 0.5}
    with TestClient(app_for(repo, **settings)) as a, TestClient(app_for(repo, **settings)) as b:
        assert a.post("/v1/admin/models/ple/versions/1/load", headers=AUTH).status_code == 200
        assert a.put("/v1/admin/models/ple/shadow", json={"version": 1, "sample": 0.5}, headers=AUTH).status_code == 200
        stored = redis.Redis.from_url(REDIS_URL).get(f"{redis_prefix}model:ple:shadow")
        assert stored is not None and b'"sample":0.5' in stored
        wait_until(lambda: shadow_row(b, 1) == 0.5, 5, "replica b to load version 1 and follow the shadow")
        for _ in range(40):
            assert b.post("/v1/rank", json=REQUEST).json()["version"] == 2
        wait_until(lambda: outcomes(b, "scored") > 0, 10, "a comparison on replica b")

        assert b.delete("/v1/admin/models/ple/shadow", headers=AUTH).status_code == 200
        wait_until(lambda: shadow_row(a, 1) is None, 5, "replica a to stop the shadow")

        with TestClient(app_for(repo, **settings)) as c:  # a replica started later reads the key
            assert shadow_row(c, 1) is None
            a.put("/v1/admin/models/ple/shadow", json={"version": 1, "sample": 1.0}, headers=AUTH)
            wait_until(lambda: shadow_row(c, 1) == 1.0, 5, "the late replica to follow")


def test_the_agreement_measures():
    a = np.arange(20, dtype=float)
    assert spearman(a, a) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
    assert top_overlap(a, a) == 1.0 and top_overlap(a, -a) == 0.0
    b = a.copy()
    b[[19, 0]] = b[[0, 19]]  # the best candidate falls to the bottom
    assert top_overlap(a, b) == 0.9
    assert top_overlap(a[:3], a[:3][::-1]) == 1.0  # fewer than 10 candidates: all of them are the top


def test_garbage_in_the_shadow_key_is_counted_and_the_shadow_stays(repo, redis_prefix):
    settings = {"redis_url": REDIS_URL, "redis_prefix": redis_prefix, "feature_store": "embedded", "control_resync_s": 0.3}
    with TestClient(app_for(repo, **settings)) as c:
        c.post("/v1/admin/models/ple/versions/1/load", headers=AUTH)
        c.put("/v1/admin/models/ple/shadow", json={"version": 1, "sample": 0.5}, headers=AUTH)
        redis.Redis.from_url(REDIS_URL).set(f"{redis_prefix}model:ple:shadow", b'{"version": 1, "sample": 7}')
        wait_until(lambda: sample(c, "ranker_control_events_total", event="corrupt_state") >= 1, 5, "the resync to see it")
        assert shadow_row(c, 1) == 0.5 and c.post("/v1/rank", json=REQUEST).status_code == 200
