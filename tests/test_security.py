"""Security checks not covered elsewhere: near-miss admin tokens, version folders linked out of the
repository. (No/wrong token and '../' names: test_lifecycle.py; log injection and SIGTERM:
test_process_safety.py; non-root image: test_deploy.py; dependency audit: scripts/audit.sh.)"""

import shutil

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

TOKEN = "s3cret-token-0123456789abcdef"


def settings(models, **extra):
    return Settings(**{"models_dir": models, "features_dir": None, "admin_token": TOKEN, "watch": "off", **extra})


def test_near_miss_tokens_are_refused_without_a_server_error(repo):
    near = [TOKEN[:-1], TOKEN + "x", TOKEN[:-1] + "F", TOKEN.upper(), " " + TOKEN[1:], TOKEN[:1], "\xe9" + TOKEN[1:],
            TOKEN * 3000]  # fmt: skip
    with TestClient(create_app(settings(repo))) as c:
        for token in near:
            r = c.post("/v1/admin/models/ple/activate", json={"version": 1},
                       headers={"Authorization": f"Bearer {token}".encode("latin-1")})  # fmt: skip
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", (token[:40], r.text)
        ok = c.post("/v1/admin/models/ple/activate", json={"version": 2}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200  # the real token works, so the refusals above were the token's doing


def test_a_version_folder_linked_out_of_the_repository_is_refused(repo, tmp_path):
    outside = tmp_path / "outside" / "3"
    shutil.copytree(repo / "ple" / "2", outside)
    (repo / "ple" / "3").symlink_to(outside, target_is_directory=True)
    with TestClient(create_app(settings(repo, watch="auto"))) as c:
        r = c.post("/v1/admin/models/ple/versions/3/load", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 422 and "outside the model repository" in r.json()["error"]["message"], r.text
        c.app.state.registry.watcher.poll()  # the watcher does not load it either
        rows = {m["version"]: m for m in c.get("/v1/models").json()["models"]}
        assert rows[3]["state"] == "failed" and "outside" in rows[3]["reason"]
        r = c.post("/v1/rank", json={"user": {"id": "u"}, "candidates": [{"id": "a", "video_len": 3.0}]})
        assert r.json()["version"] == 2
