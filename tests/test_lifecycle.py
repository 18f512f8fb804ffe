"""Model lifecycle: versions load, fail, swap under load, split, roll back; admin API rules."""

import gc
import json
import shutil
import threading
import time
import weakref

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import live_server

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REQUEST = {"user": {"id": "u5"}, "context": {"hour": 9},
           "candidates": [{"id": f"v{i}", "video_len": 10.0 + i} for i in range(20)]}  # fmt: skip


def copy_version(models, source: int, target: int):
    """A new version folder holding the same model (model.json renumbered)."""
    src, dst = models / "ple" / str(source), models / "ple" / str(target)
    shutil.copytree(src, dst)
    spec = json.loads((dst / "model.json").read_text())
    spec["version"] = target
    (dst / "model.json").write_text(json.dumps(spec))
    return dst


def settings(models, **extra):
    return Settings(**{"models_dir": models, "features_dir": None, "admin_token": TOKEN, "watch": "off", **extra})


def rank(client, **extra):
    r = client.post("/v1/rank", json={**REQUEST, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_startup_serves_the_newest_version(repo):
    with TestClient(create_app(settings(repo))) as c:
        assert rank(c)["version"] == 2
        models = c.get("/v1/models").json()["models"]
        assert [(m["version"], m["state"], m["active"], m["traffic_share"]) for m in models] == [(2, "ready", True, 1.0)]
        assert models[0]["default_weights"]["ctr"] == 1.0


def test_swap_under_load_fails_no_request_and_never_mixes_versions(repo):
    app = create_app(settings(repo))
    with live_server(app) as url:
        assert httpx.post(f"{url}/v1/admin/models/ple/versions/1/load", headers=AUTH).status_code == 200
        reference = {v: httpx.post(f"{url}/v1/rank", json={**REQUEST, "version": v}).json()["items"] for v in (1, 2)}
        assert reference[1] != reference[2]
        results, stop = [], threading.Event()

        def client_loop():
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    r = client.post(f"{url}/v1/rank", json=REQUEST)
                    results.append((r.status_code, r.json()))

        threads = [threading.Thread(target=client_loop) for _ in range(4)]
        for t in threads:
            t.start()
        swaps, start = 0, time.monotonic()
        # At least 2 s and 30 swaps of traffic; bounded at 60 s on a busy machine.
        while (swaps < 30 or time.monotonic() - start < 2) and time.monotonic() - start < 60:
            r = httpx.post(f"{url}/v1/admin/models/ple/activate", json={"version": 1 + swaps % 2}, headers=AUTH)
            assert r.status_code == 200, r.text
            swaps += 1
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
    assert swaps >= 30 and len(results) > 50
    assert [s for s, _ in results if s != 200] == []
    versions = {body["version"] for _, body in results}
    assert versions == {1, 2}
    for _, body in results:
        assert body["items"] == reference[body["version"]]  # the whole answer from one version


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (lambda d: (d / "model.onnx").write_bytes(b"not an onnx model"), "sha256"),
        (lambda d: _edit_spec(d, onnx_sha256="0" * 64), "sha256"),
        (lambda d: _garbage_with_matching_checksum(d), "ONNX Runtime cannot open"),
        (lambda d: _edit_spec(d, inputs=[{"name": "ids", "dtype": "int64", "shape": [-1, 1]}]), "inputs"),
        (lambda d: (d / "model.onnx").unlink(), "model.onnx is missing"),
        (lambda d: (d / "model.json").unlink(), "model.json is missing"),
        (lambda d: (d / "model.json").write_text("{"), "does not check out"),
    ],
    ids=["garbage", "bad-checksum", "garbage-checksummed", "renamed-tensors", "no-onnx", "half-written", "bad-json"],
)
def test_a_failed_version_never_replaces_the_serving_one(repo, corrupt, reason):
    with TestClient(create_app(settings(repo, watch="auto"))) as c:
        registry = c.app.state.registry
        corrupt(copy_version(repo, 2, 3))
        registry.watcher.poll()
        row = next(m for m in c.get("/v1/models").json()["models"] if m["version"] == 3)
        assert row["state"] == "failed" and reason in row["reason"]
        assert rank(c)["version"] == 2
        r = c.post("/v1/rank", json={**REQUEST, "version": 3})
        assert r.status_code == 409 and r.json()["error"]["code"] == "version_not_ready"
        r = c.post("/v1/admin/models/ple/activate", json={"version": 3}, headers=AUTH)
        assert r.status_code == 409
        assert 'ranker_model_loads_total{model="ple",result="failed"} 1.0' in c.get("/metrics").text
        shutil.rmtree(repo / "ple" / "3")  # the broken folder removed: no longer listed
        registry.watcher.poll()
        assert [m["version"] for m in c.get("/v1/models").json()["models"]] == [2]


def _edit_spec(folder, **changes):
    spec = json.loads((folder / "model.json").read_text())
    spec.update(changes)
    (folder / "model.json").write_text(json.dumps(spec))


def _garbage_with_matching_checksum(folder):
    import hashlib

    (folder / "model.onnx").write_bytes(b"\x08\x07garbage")
    _edit_spec(folder, onnx_sha256=hashlib.sha256(b"\x08\x07garbage").hexdigest())


def test_a_half_written_folder_loads_once_complete(repo):
    with TestClient(create_app(settings(repo, watch="auto"))) as c:
        registry = c.app.state.registry
        folder = copy_version(repo, 2, 3)
        spec = (folder / "model.json").read_bytes()
        (folder / "model.json").unlink()  # the copy has not reached model.json yet
        registry.watcher.poll()
        assert rank(c)["version"] == 2
        (folder / "model.json").write_bytes(spec)
        registry.watcher.poll()
        assert rank(c)["version"] == 3  # auto: the newer, now complete version serves


def test_explicit_mode_loads_new_versions_without_routing_to_them(repo):
    with TestClient(create_app(settings(repo, watch="explicit"))) as c:
        copy_version(repo, 1, 3)
        c.app.state.registry.watcher.poll()
        rows = {m["version"]: m for m in c.get("/v1/models").json()["models"]}
        assert rows[3]["state"] == "ready" and rows[3]["traffic_share"] == 0.0
        assert rank(c)["version"] == 2
        assert c.post("/v1/admin/models/ple/activate", json={"version": 3}, headers=AUTH).status_code == 200
        assert rank(c)["version"] == 3


def test_the_watcher_thread_picks_up_a_new_version(repo):
    with TestClient(create_app(settings(repo, watch="auto", watch_interval_s=0.1))) as c:
        copy_version(repo, 1, 3)
        deadline = time.monotonic() + 10
        while rank(c)["version"] != 3:
            assert time.monotonic() < deadline, "the watcher did not route to version 3"
            time.sleep(0.1)


def test_rollback_returns_to_the_previous_routing(repo):
    with TestClient(create_app(settings(repo))) as c:
        c.post("/v1/admin/models/ple/versions/1/load", headers=AUTH)
        assert c.post("/v1/admin/models/ple/activate", json={"version": 1}, headers=AUTH).json()["active"] == 1
        c.put("/v1/admin/models/ple/split", json={"weights": {"1": 1, "2": 3}}, headers=AUTH)
        r = c.post("/v1/admin/models/ple/rollback", headers=AUTH)
        assert r.status_code == 200 and r.json() == {"model": "ple", "active": 1, "split": None}
        assert rank(c)["version"] == 1
        assert c.post("/v1/admin/models/ple/rollback", headers=AUTH).json()["active"] == 2
        assert rank(c)["version"] == 2


def test_split_keeps_each_user_in_one_arm_and_matches_the_weights(repo):
    with TestClient(create_app(settings(repo))) as c:
        c.post("/v1/admin/models/ple/versions/1/load", headers=AUTH)
        r = c.put("/v1/admin/models/ple/split", json={"weights": {"1": 0.7, "2": 0.3}}, headers=AUTH)
        assert r.json() == {"model": "ple", "active": 1, "split": {"1": 0.7, "2": 0.3}}
        registry = c.app.state.registry
        arms = [registry.resolve(None, None, f"user-{i}")[0].version for i in range(10_000)]
        assert abs(arms.count(1) / 10_000 - 0.7) < 0.01
        assert all(registry.resolve(None, None, f"user-{i}")[0].version == arms[i] for i in range(0, 10_000, 97))
        for i in range(5):  # over HTTP too, with the bucket in the answer
            body = c.post("/v1/rank", json={**REQUEST, "user": {"id": f"user-{i}"}}).json()
            assert body["version"] == arms[i] and 0 <= body["bucket"] < 10_000
        rows = {m["version"]: m["traffic_share"] for m in c.get("/v1/models").json()["models"]}
        assert rows == {1: 0.7, 2: 0.3}
        # Weights near the float limit: their sum would be inf, and every share 0.
        r = c.put("/v1/admin/models/ple/split", json={"weights": {"1": 1e308, "2": 1e308}}, headers=AUTH)
        assert r.json()["split"] == {"1": 0.5, "2": 0.5}


def test_admin_needs_the_bearer_token(repo):
    with TestClient(create_app(settings(repo))) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}):
            r = c.post("/v1/admin/models/ple/activate", json={"version": 2}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            # The token is checked before the body is read: garbage without it is a 401 too.
            r = c.put("/v1/admin/models/ple/split", content=b"{not json", headers=headers)
            assert r.status_code == 401, r.text
    with TestClient(create_app(Settings(models_dir=repo, features_dir=None, watch="off"))) as c:
        r = c.post("/v1/admin/models/ple/activate", json={"version": 2}, headers=AUTH)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_admin_conflicts_and_unknowns(repo):
    with TestClient(create_app(settings(repo))) as c:
        assert c.delete("/v1/admin/models/ple/versions/2", headers=AUTH).status_code == 409  # serving
        assert c.delete("/v1/admin/models/ple/versions/7", headers=AUTH).status_code == 404
        assert c.post("/v1/admin/models/ple/activate", json={"version": 7}, headers=AUTH).status_code == 404
        assert c.post("/v1/admin/models/ple/versions/9/load", headers=AUTH).status_code == 404
        assert c.post("/v1/admin/models/ple/rollback", headers=AUTH).status_code == 409  # no history
        assert c.post("/v1/admin/models/nope/rollback", headers=AUTH).status_code == 404
        r = c.put("/v1/admin/models/ple/split", json={"weights": {"2": 0}}, headers=AUTH)
        assert r.status_code == 422 and r.json()["error"]["field"] == "weights"
        r = c.put("/v1/admin/models/ple/split", json={"weights": {"2": 1, "1": 1}}, headers=AUTH)
        assert r.status_code == 404  # version 1 is not loaded
        # Strict types: nothing is coerced into a version or a weight.
        for weights in ({" 2": 1}, {"2.0": 1}, {"02": 1}, {"two": 1}, {"2": "0.5"}, {"2": True}):
            r = c.put("/v1/admin/models/ple/split", json={"weights": weights}, headers=AUTH)
            assert r.status_code == 422 and r.json()["error"]["field"].startswith("weights"), (weights, r.text)
        for version in ("2", True, 2.0):
            r = c.post("/v1/admin/models/ple/activate", json={"version": version}, headers=AUTH)
            assert r.status_code == 422 and r.json()["error"]["field"] == "version", (version, r.text)
        assert c.post("/v1/rank", json={**REQUEST, "version": 1}).status_code == 404


def test_unloading_releases_the_old_session(repo):
    with TestClient(create_app(settings(repo))) as c:
        c.post("/v1/admin/models/ple/versions/1/load", headers=AUTH)
        handle = weakref.ref(c.app.state.registry.handle("ple", 1))
        assert c.delete("/v1/admin/models/ple/versions/1", headers=AUTH).status_code == 200
        gc.collect()
        assert handle() is None
        assert [m["version"] for m in c.get("/v1/models").json()["models"]] == [2]


def test_names_and_links_out_of_the_repository_are_refused(repo, tmp_path):
    outside = tmp_path / "outside" / "1"
    shutil.copytree(repo / "ple" / "1", outside)
    (repo / "evil").symlink_to(tmp_path / "outside")
    with TestClient(create_app(settings(repo))) as c:
        for name in ("..", "%2e%2e", "ple%2F..%2F..", ".hidden"):
            r = c.post(f"/v1/admin/models/{name}/versions/1/load", headers=AUTH)
            assert r.status_code in (404, 422), (name, r.status_code)
        r = c.post("/v1/admin/models/evil/versions/1/load", headers=AUTH)
        assert r.status_code == 422 and r.json()["error"]["code"] == "outside_repository"


def test_an_unreadable_models_directory_serves_nothing_but_stays_up(tmp_path):
    not_a_dir = tmp_path / "models"
    not_a_dir.write_text("a file, not a folder")
    with TestClient(create_app(settings(not_a_dir, watch="auto"))) as c:
        c.app.state.registry.watcher.poll()
        assert c.get("/health/live").status_code == 200
        assert c.get("/health/ready").status_code == 503
        assert c.post("/v1/rank", json=REQUEST).status_code == 503


def test_a_split_gives_every_version_a_weight_and_includes_the_active_one(repo):
    with TestClient(create_app(settings(repo))) as c:
        assert c.post("/v1/admin/models/ple/versions/1/load", headers=AUTH).status_code == 200
        for weights, field, says in (({"1": 1.0}, "weights", "active version 2"),
                                     ({"2": 1.0, "1": 0}, "weights.1", "weight 0")):  # fmt: skip
            r = c.put("/v1/admin/models/ple/split", json={"weights": weights}, headers=AUTH)
            assert r.status_code == 422, (weights, r.text)
            assert r.json()["error"]["field"] == field and says in r.json()["error"]["message"], r.text
            assert rank(c)["version"] == 2  # nothing changed
        r = c.put("/v1/admin/models/ple/split", json={"weights": {"1": 0.5, "2": 0.5}}, headers=AUTH)
        assert r.status_code == 200 and r.json()["split"] == {"1": 0.5, "2": 0.5}


def test_split_shares_are_exactly_what_the_admin_sent(repo, caplog):
    with TestClient(create_app(settings(repo))) as c:
        c.post("/v1/admin/models/ple/versions/1/load", headers=AUTH)
        with caplog.at_level("INFO", logger="ranker.registry"):
            r = c.put("/v1/admin/models/ple/split", json={"weights": {"1": 0.9, "2": 0.1}}, headers=AUTH)
        assert r.json() == {"model": "ple", "active": 1, "split": {"1": 0.9, "2": 0.1}}  # not 0.8999999999999999
        assert {m["version"]: m["traffic_share"] for m in c.get("/v1/models").json()["models"]} == {1: 0.9, 2: 0.1}
        metrics = c.get("/metrics").text
        assert 'ranker_model_traffic_share{model="ple",version="1"} 0.9\n' in metrics
        assert "model ple now routes {1: 0.9, 2: 0.1}" in caplog.text
        # Shares are whole A/B buckets out of 10,000: 1:2 is 3333 and 6667 of them, exactly.
        r = c.put("/v1/admin/models/ple/split", json={"weights": {"1": 1, "2": 2}}, headers=AUTH)
        assert r.json()["split"] == {"1": 0.3333, "2": 0.6667}
        routing = c.app.state.registry._routing["ple"]
        arms = [routing.pick(b).version for b in range(10_000)]
        assert (arms.count(1), arms.count(2)) == (3333, 6667)
        # A weight too small for one bucket would put a version in the split that no user reaches.
        r = c.put("/v1/admin/models/ple/split", json={"weights": {"1": 1, "2": 1e-9}}, headers=AUTH)
        assert r.status_code == 422 and r.json()["error"]["field"] == "weights.2", r.text
