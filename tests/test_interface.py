"""A model name keeps one interface (contract.modelspec.Interface: tasks, outputs, the features a
request relies on). A version with another one never takes traffic by itself (issue 16: a census
model written under `ple` took over the video ranker); an admin may route to it with an explicit
override."""

from __future__ import annotations

import shutil

from fastapi.testclient import TestClient

from contract.modelspec import ModelSpec
from service.app import create_app
from service.settings import Settings
from tests.conftest import REDIS_URL, copy_version, other_interface_version

TOKEN = "interface-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REQUEST = {"user": {"id": "u5"}, "candidates": [{"id": f"v{i}", "video_len": 10.0 + i} for i in range(5)],
           "weights": {"vtr": 1.0}}  # fmt: skip


def settings(models, **extra) -> Settings:
    return Settings(**{"models_dir": models, "features_dir": None, "admin_token": TOKEN, "watch": "off", **extra})


def rows(client) -> dict[int, dict]:
    return {m["version"]: m for m in client.get("/v1/models").json()["models"]}


def metric(client, name: str) -> float:
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith(name + "{")]
    return sum(float(line.split()[-1]) for line in lines)


def test_the_interface_ignores_what_retraining_changes_and_names_what_differs(repo):
    spec = ModelSpec.model_validate_json((repo / "ple" / "1" / "model.json").read_text())
    refit = spec.model_copy(update={
        "features": [f.model_copy(update={"mean": f.mean + 1.0, "std": f.std * 2}) for f in spec.features],
        "hyperparameters": {"expert_hidden": [7]}, "version": 9})  # fmt: skip
    assert spec.interface() == refit.interface()
    assert ModelSpec.model_validate_json((repo / "ple" / "2" / "model.json").read_text()).interface() == spec.interface()

    other = ModelSpec.model_validate_json((other_interface_version(repo, 1, 3) / "model.json").read_text())
    change = spec.interface().difference(other.interface())
    assert change is not None and "without vtr" in change and "with income" in change, change
    moved = spec.model_copy(update={"features": [f.model_copy(update={"source": "context"}) if i == 0 else f
                                                 for i, f in enumerate(spec.features)]})  # fmt: skip
    assert "features" in spec.interface().difference(moved.interface())
    # A KServe v2 client sends the input tensors: a wider one (another encoding of a number) is a change too.
    wider = spec.model_copy(update={"inputs": [i.model_copy(update={"shape": [-1, i.shape[1] + 3]}) if i.name == "dense"
                                               else i for i in spec.inputs]})  # fmt: skip
    assert "inputs" in spec.interface().difference(wider.interface())


def test_the_watcher_never_routes_to_another_interface_and_keeps_the_split(repo):
    with TestClient(create_app(settings(repo, watch="auto"))) as c:
        assert c.post("/v1/admin/models/ple/versions/1/load", headers=AUTH).status_code == 200
        r = c.put("/v1/admin/models/ple/split", json={"weights": {"1": 0.1, "2": 0.9}}, headers=AUTH)
        assert r.status_code == 200, r.text
        before = {v: m["traffic_share"] for v, m in rows(c).items()}
        other_interface_version(repo, 2, 3)
        c.app.state.registry.watcher.poll()
        after = rows(c)
        assert after[3]["state"] == "ready" and after[3]["traffic_share"] == 0.0
        assert after[3]["compatible"] is False and "income" in after[3]["interface_change"]
        assert after[2]["compatible"] is True and "interface_change" not in after[2]
        assert {v: m["traffic_share"] for v, m in after.items() if v != 3} == before  # the split is kept
        assert metric(c, "ranker_incompatible_versions_total") == 1
        assert c.post("/v1/rank", json=REQUEST).status_code == 200  # the video ranker's request still works


def test_an_admin_changes_the_interface_only_with_the_override(repo):
    with TestClient(create_app(settings(repo))) as c:
        other_interface_version(repo, 2, 3)
        assert c.post("/v1/admin/models/ple/versions/3/load", headers=AUTH).status_code == 200
        for path, method, body in (("activate", "post", {"version": 3}), ("split", "put", {"weights": {"2": 0.9, "3": 0.1}})):
            r = getattr(c, method)(f"/v1/admin/models/ple/{path}", json=body, headers=AUTH)
            assert r.status_code == 409, r.text
            error = r.json()["error"]
            assert error["code"] == "interface_change" and error["field"] == "allow_interface_change"
            assert "allow_interface_change" in error["message"] and "income" in error["message"]
        assert {v for v, m in rows(c).items() if m["traffic_share"] > 0} == {2}

        r = c.post("/v1/admin/models/ple/activate", json={"version": 3, "allow_interface_change": True}, headers=AUTH)
        assert r.status_code == 200 and r.json()["active"] == 3
        assert rows(c)[2]["compatible"] is False  # the model's interface is now version 3's
        r = c.post("/v1/rank", json=REQUEST)
        assert r.status_code == 422 and r.json()["error"]["field"] == "weights.vtr"
        # Back to the video ranker is an interface change too, and needs the override as well.
        assert c.post("/v1/admin/models/ple/activate", json={"version": 2}, headers=AUTH).status_code == 409


def test_a_version_with_the_same_interface_needs_no_override(repo):
    with TestClient(create_app(settings(repo, watch="auto"))) as c:
        copy_version(repo, 1, 3)
        c.app.state.registry.watcher.poll()
        assert rows(c)[3]["compatible"] is True and rows(c)[3]["active"] is True
        assert metric(c, "ranker_incompatible_versions_total") == 0


def test_a_restart_serves_the_models_own_interface_not_the_newest_folder(repo):
    other_interface_version(repo, 2, 3)
    with TestClient(create_app(settings(repo))) as c:  # no shared state: the start-up rule decides
        assert {v: m["traffic_share"] for v, m in rows(c).items()} == {2: 1.0}  # 3 is newest, but not ple's
        assert c.post("/v1/rank", json=REQUEST).json()["version"] == 2
        assert metric(c, "ranker_incompatible_versions_total") == 1


def test_the_oldest_interface_that_loads_decides(repo):
    (repo / "ple" / "1" / "model.onnx").write_bytes(b"broken")  # 1 and 2 share an interface; 2 still loads
    other_interface_version(repo, 2, 3)
    with TestClient(create_app(settings(repo))) as c:
        assert rows(c)[2]["active"] is True
    (repo / "ple" / "2" / "model.onnx").write_bytes(b"broken")  # none of ple's own interface loads
    with TestClient(create_app(settings(repo))) as c:
        assert rows(c)[3]["active"] is True  # then the next one: something serves rather than nothing


def test_with_redis_an_admins_interface_change_survives_a_restart(repo, redis_prefix):
    other_interface_version(repo, 2, 3)
    redis_settings = {"redis_url": REDIS_URL, "redis_prefix": redis_prefix}
    with TestClient(create_app(settings(repo, **redis_settings))) as c:
        assert rows(c)[2]["active"] is True  # the first replica records ple's own interface, not the newest
        assert c.post("/v1/admin/models/ple/versions/3/load", headers=AUTH).status_code == 200
        r = c.post("/v1/admin/models/ple/activate", json={"version": 3, "allow_interface_change": True}, headers=AUTH)
        assert r.status_code == 200
    with TestClient(create_app(settings(repo, **redis_settings))) as c:
        assert rows(c)[3]["active"] is True


def test_by_default_a_new_version_waits_for_an_admin(repo):
    with TestClient(create_app(Settings(models_dir=repo, features_dir=None, admin_token=TOKEN))) as c:
        copy_version(repo, 1, 3)  # same interface, newest: still not routed by itself
        c.app.state.registry.watcher.poll()
        assert rows(c)[3]["state"] == "ready" and rows(c)[3]["traffic_share"] == 0.0
        assert c.post("/v1/rank", json=REQUEST).json()["version"] == 2


def test_a_model_that_appears_after_start_serves_by_the_start_up_rule(repo, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with TestClient(create_app(Settings(models_dir=empty, features_dir=None))) as c:
        assert c.get("/health/ready").status_code == 503
        shutil.copytree(repo / "ple", empty / "ple")
        other_interface_version(empty, 2, 3)
        c.app.state.registry.watcher.poll()
        assert c.get("/health/ready").status_code == 200
        assert c.post("/v1/rank", json=REQUEST).json()["version"] == 2


def test_auto_does_not_end_an_admins_split(repo):
    with TestClient(create_app(settings(repo, watch="auto"))) as c:
        assert c.post("/v1/admin/models/ple/versions/1/load", headers=AUTH).status_code == 200
        assert c.put("/v1/admin/models/ple/split", json={"weights": {"1": 0.25, "2": 0.75}}, headers=AUTH).status_code == 200
        copy_version(repo, 2, 3)  # the same interface, newer
        c.app.state.registry.watcher.poll()
        assert {v: m["traffic_share"] for v, m in rows(c).items()} == {1: 0.25, 2: 0.75, 3: 0.0}
