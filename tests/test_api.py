import math

import numpy as np
import pytest
from fastapi.testclient import TestClient

from contract.modelspec import LogTransform, ModelSpec, SigmoidTransform
from contract.scoring import log_video_len_factor
from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def client(trained):
    with TestClient(create_app(Settings(models_dir=trained.models_dir, features_dir=trained.features_dir))) as c:
        yield c


@pytest.fixture(scope="module")
def spec(trained) -> ModelSpec:
    return ModelSpec.model_validate_json((trained.version_dir / "model.json").read_text())


def request(n=100, **extra):
    return {
        "request_id": "r-1",
        "user": {"id": "u7", "features": {"device": "ios"}},
        "context": {"network": "wifi", "hour": 21},
        "candidates": [{"id": f"v{i}", "video_len": 5.0 + 3.0 * i} for i in range(n)],
        **extra,
    }


def reference_scores(items, weights, transform, lengths, eps):
    """The ranking formula (docs/api.md) on the per-task values the service returned."""
    out = []
    for item in items:
        s = math.exp(log_video_len_factor(transform, np.array([lengths[item["id"]]]))[0])
        for task, w in weights.items():
            s *= min(max(item["tasks"][task], eps), 1.0) ** w
        out.append(s)
    return np.array(out)


def test_ranks_every_candidate_in_score_order(client, spec):
    body = request()
    r = client.post("/v1/rank", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert (data["request_id"], data["model"], data["version"]) == ("r-1", "ple", 1)
    assert 0 <= data["bucket"] < 10_000
    items = data["items"]
    assert sorted(i["id"] for i in items) == sorted(c["id"] for c in body["candidates"])
    lengths = {c["id"]: c["video_len"] for c in body["candidates"]}
    expected = reference_scores(items, spec.scoring.weights, spec.scoring.video_len_transform, lengths, spec.scoring.eps)
    np.testing.assert_allclose([i["score"] for i in items], expected, rtol=1e-6)
    assert all(a >= b for a, b in zip(expected, expected[1:]))
    assert set(items[0]["tasks"]) == {"ctr", "vtr", "vcr", "shr", "cmr"}


def test_request_weights_and_transform_override_the_defaults(client, spec):
    weights = {"ctr": 0.0, "vtr": 3.0}
    transform = {"kind": "sigmoid", "mu": 100.0, "s": 20.0}
    r = client.post("/v1/rank", json=request(weights=weights, video_len_transform=transform))
    items = r.json()["items"]
    lengths = {c["id"]: c["video_len"] for c in request()["candidates"]}
    merged = {**spec.scoring.weights, **weights}
    expected = reference_scores(items, merged, SigmoidTransform(**transform), lengths, spec.scoring.eps)
    np.testing.assert_allclose([i["score"] for i in items], expected, rtol=1e-6)
    default_order = [i["id"] for i in client.post("/v1/rank", json=request()).json()["items"]]
    assert [i["id"] for i in items] != default_order


def test_top_k_returns_the_best_k(client):
    full = client.post("/v1/rank", json=request()).json()["items"]
    top = client.post("/v1/rank", json=request(top_k=7)).json()["items"]
    assert [i["id"] for i in top] == [i["id"] for i in full[:7]]


def test_explain_factors_multiply_to_the_score(client):
    items = client.post("/v1/rank", json=request(n=20, explain=True)).json()["items"]
    for item in items:
        product = item["explain"]["f_video_len"] * math.prod(item["explain"]["factors"].values())
        assert product == pytest.approx(item["score"], rel=1e-9)
        assert item["explain"]["log_score"] == pytest.approx(math.log(item["score"]), rel=1e-12)


def test_scores_stay_numbers_at_the_edges_of_float64(client):
    # f(video_len) = len^5 past 1e308: refused, naming where it comes from (never a null score).
    huge = client.post("/v1/rank", json=request(n=2, video_len_transform={"kind": "power", "alpha": 5},
                                                candidates=[{"id": "a", "video_len": 9.0}, {"id": "b", "video_len": 1e300}]))  # fmt: skip
    assert huge.status_code == 422, huge.text
    assert huge.json()["error"]["code"] == "score_overflow" and huge.json()["error"]["field"] == "video_len_transform"
    assert "candidates[1]" in huge.json()["error"]["message"]
    # f below 1e-308 rounds to 0.0 in float64: the scores read 0 but the order follows the exact log score.
    tiny = client.post("/v1/rank", json=request(n=2, explain=True, video_len_transform={"kind": "sigmoid", "mu": 900, "s": 1},
                                                candidates=[{"id": "a", "video_len": 5.0}, {"id": "b", "video_len": 6.0}]))  # fmt: skip
    items = tiny.json()["items"]
    assert [i["score"] for i in items] == [0.0, 0.0]
    assert items[0]["explain"]["log_score"] > items[1]["explain"]["log_score"] > -1000


def test_request_features_override_the_store_and_defaults_are_counted(client, trained, spec):
    vid = trained.log.videos.index[0]
    stored_len = float(trained.log.videos.loc[vid, "video_len"])
    base = {"user": {"id": "u1"}, "candidates": [{"id": vid}]}
    r = client.post("/v1/rank", json={**base, "explain": True, "video_len_transform": {"kind": "log", "tau": 60}})
    f = r.json()["items"][0]["explain"]["f_video_len"]
    assert f == pytest.approx(math.log1p(stored_len / 60), rel=1e-9)  # video_len came from the store
    ctr_known = r.json()["items"][0]["tasks"]["ctr"]
    other = next(c for c in ("cars", "music") if c != trained.log.videos.loc[vid, "category"])
    r2 = client.post("/v1/rank", json={**base, "candidates": [{"id": vid, "features": {"category": other}}]})
    assert r2.json()["items"][0]["tasks"]["ctr"] != ctr_known  # the request's category was used
    sent_len = {**base, "explain": True, "video_len_transform": {"kind": "log", "tau": 60},
                "candidates": [{"id": vid, "features": {"video_len": stored_len + 100}}]}  # fmt: skip
    f3 = client.post("/v1/rank", json=sent_len).json()["items"][0]["explain"]["f_video_len"]
    assert f3 == pytest.approx(math.log1p((stored_len + 100) / 60), rel=1e-9)  # and its features.video_len
    unknown = client.post("/v1/rank", json={"user": {"id": "nobody"}, "candidates": [{"id": "new", "video_len": 9.0}]})
    assert unknown.status_code == 200
    assert unknown.json()["features_defaulted"] > r.json()["features_defaulted"]
    # An unknown item sent without its length takes the schema's default length, counted like any default.
    no_len = client.post("/v1/rank", json={"user": {"id": "nobody"}, "candidates": [{"id": "new"}], "explain": True,
                                           "video_len_transform": {"kind": "log", "tau": 60}})  # fmt: skip
    assert no_len.status_code == 200, no_len.text
    default_len = next(f.default for f in spec.features if f.name == "video_len")
    assert no_len.json()["items"][0]["explain"]["f_video_len"] == pytest.approx(math.log1p(default_len / 60), rel=1e-9)
    assert no_len.json()["features_defaulted"] == unknown.json()["features_defaulted"] + 1


@pytest.mark.parametrize(
    "change, field",
    [
        ({"candidates": []}, "candidates"),
        ({"weights": {"likes": 1.0}}, "weights.likes"),
        ({"weights": {"ctr": -0.5}}, "weights.ctr"),
        ({"candidates": [{"id": "a", "video_len": 0}]}, "candidates[0].video_len"),
        ({"candidates": [{"id": "a", "video_len": -3}]}, "candidates[0].video_len"),
        ({"candidates": [{"id": "a", "video_len": "long"}]}, "candidates[0].video_len"),
        ({"top_k": 0}, "top_k"),
        ({"user": {"id": 42}}, "user.id"),
        ({"user": "u1"}, "user"),
        ({"candidates": "v1"}, "candidates"),
        ({"context": {"hour": {"nested": 1}}}, "context.hour"),
        ({"candidates": [{"id": "a", "video_len": 3, "features": {"tags": ["a", "b"]}}]}, "candidates[0].features.tags"),
        ({"video_len_transform": {"kind": "cubic"}}, "video_len_transform"),
        ({"candidates": [{"id": "a", "video_len": 3, "features": {"video_age_days": "old"}}]},
         "candidates[0].features.video_age_days"),
        ({"candidates": [{"id": "a", "video_len": 3}, {"id": "b", "video_len": 3, "features": {"author_followers": 10**400}}]},
         "candidates[1].features.author_followers"),
        ({"user": {"id": "u", "features": {"user_watch_minutes": -(10**400)}}}, "user.features.user_watch_minutes"),
        ({"candidates": [{"id": "a", "features": {"video_len": "long"}}]}, "candidates[0].features.video_len"),
        ({"model": "../etc"}, "model"),
        ({"candidates": [{"id": "a", "video_len": 3}, {"id": "b", "video_len": 4}, {"id": "a", "video_len": 5}]},
         "candidates[2].id"),
        ({"user": {"id": "u", "features": {"device": "x" * 2000}}}, "user.features.device"),
        ({"user": {"id": "u" * 300}}, "user.id"),
        ({"unexpected": 1}, "unexpected"),
        # Strict types: nothing is coerced.
        ({"top_k": True}, "top_k"),
        ({"top_k": "2"}, "top_k"),
        ({"top_k": 2.0}, "top_k"),
        ({"version": "1"}, "version"),
        ({"explain": "yes"}, "explain"),
        ({"explain": 1}, "explain"),
        ({"candidates": [{"id": "a", "video_len": "35"}]}, "candidates[0].video_len"),
        ({"candidates": [{"id": "a", "video_len": True}]}, "candidates[0].video_len"),
        ({"weights": {"vtr": "0.5"}}, "weights.vtr"),
        ({"weights": {"vtr": False}}, "weights.vtr"),
        ({"weights": {"x" * 100: 1.0}}, "weights"),
        ({"video_len_transform": {"kind": "log", "tau": "60"}}, "video_len_transform.tau"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(client, change, field):
    r = client.post("/v1/rank", json={**request(n=3), **change})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] is not None and error["field"].startswith(field)
    assert error["code"] and error["message"]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
@pytest.mark.parametrize(
    "template, field",
    [
        (b'{"user": {"id": "u"}, "candidates": [{"id": "a", "video_len": %s}]}', "candidates[0].video_len"),
        (b'{"user": {"id": "u"}, "candidates": [{"id": "a", "video_len": 3}], "weights": {"ctr": %s}}', "weights.ctr"),
        (b'{"user": {"id": "u"}, "context": {"hour": %s}, "candidates": [{"id": "a", "video_len": 3}]}', "context.hour"),
        (b'{"user": {"id": "u"}, "candidates": [{"id": "a", "video_len": 3}], '
         b'"video_len_transform": {"kind": "power", "alpha": %s}}', "video_len_transform.alpha"),
    ],
)
def test_non_finite_numbers_anywhere_are_rejected(client, literal, template, field):
    r = client.post("/v1/rank", content=template % literal, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == field


def test_malformed_json_and_unknown_routes_use_the_error_shape(client):
    r = client.post("/v1/rank", content=b'{"user": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"  # README: malformed JSON is a 400
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_unknown_model_or_version_is_a_404(client):
    assert client.post("/v1/rank", json=request(n=2, model="mmoe")).status_code == 404
    r = client.post("/v1/rank", json=request(n=2, version=99))
    assert r.status_code == 404 and r.json()["error"]["field"] == "version"


def test_limits_answer_413_and_422(trained):
    settings = Settings(models_dir=trained.models_dir, features_dir=None, max_candidates=5, max_body_bytes=2048)
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/rank", json=request(n=6))
        assert r.status_code == 413 and r.json()["error"]["field"] == "candidates"
        r = c.post("/v1/rank", json={**request(n=2), "context": {"pad": "x" * 4000}})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_models_and_health(client):
    models = client.get("/v1/models").json()["models"]
    assert models[0]["name"] == "ple" and models[0]["state"] == "ready" and models[0]["active"]
    assert models[0]["provider"] == "CPUExecutionProvider"
    assert client.get("/health/live").status_code == 200
    assert client.get("/health/ready").json()["status"] == "ready"
    assert client.get("/openapi.json").json()["paths"]["/v1/rank"]["post"]
    metrics = client.get("/metrics").text
    assert 'ranker_request_duration_seconds_count{method="POST",route="/v1/rank",status="200"}' in metrics
    assert "ranker_inference_duration_seconds_bucket" in metrics


def test_without_a_model_rank_and_ready_answer_503(tmp_path):
    with TestClient(create_app(Settings(models_dir=tmp_path, features_dir=None))) as c:
        assert c.get("/health/live").status_code == 200
        assert c.get("/health/ready").status_code == 503
        r = c.post("/v1/rank", json=request(n=2))
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"


def test_default_transform_is_the_model_json_one(spec):
    assert isinstance(spec.scoring.video_len_transform, LogTransform)


def test_the_openapi_examples_are_valid_requests(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    examples = schemas["RankRequest"]["examples"]
    assert examples
    for example in examples:
        r = client.post("/v1/rank", json=example)
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == min(example.get("top_k") or 99, len(example["candidates"]))


@pytest.mark.parametrize(
    "loc, field",
    [
        (("body", "candidates", 3, "video_len"), "candidates[3].video_len"),
        (("body", "candidates", 0, "features", "", "[key]"), 'candidates[0].features[""]'),
        (("body", "weights", "one", "[key]"), "weights.one"),
        (("body", "weights", "a.b"), 'weights["a.b"]'),
        (("body", "weights", "x" * 100, "[key]"), 'weights["' + "x" * 61 + '..."]'),
        (("body", "video_len_transform", "log", "tau"), "video_len_transform.tau"),
        (("body",), None),
    ],
)
def test_error_fields_name_the_path_as_a_client_would_write_it(loc, field):
    from service.api.errors import field_path

    assert field_path(loc) == field


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_sent_as_json_is_a_415_that_says_so(client, content_type):
    body = b'{"user": {"id": "u"}, "candidates": [{"id": "a", "video_len": 3.0}]}'
    r = client.post("/v1/rank", content=body, headers={"content-type": content_type} if content_type else {})
    assert r.status_code == 415, r.text
    assert r.json()["error"]["field"] == "content-type" and "application/json" in r.json()["error"]["message"]
    ok = client.post("/v1/rank", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


@pytest.mark.parametrize("path", ["/v1/rank", "/v1/admin/models/ple/activate", "/v1/admin/models/ple/split",
                                  "/v2/models/ple/infer"])  # fmt: skip
def test_a_body_that_is_not_json_is_a_400_naming_where_and_a_schema_error_stays_a_422(trained, path):
    settings = Settings(models_dir=trained.models_dir, features_dir=None, admin_token="t")
    method = "PUT" if path.endswith("split") else "POST"
    with TestClient(create_app(settings)) as c:

        def send(content: bytes):
            r = c.request(method, path, content=content,
                          headers={"content-type": "application/json", "authorization": "Bearer t"})  # fmt: skip
            return r.status_code, r.json()["error"]

        status, error = send(b'{"version": 1,\n "candidates": [}')
        assert (status, error["code"], error["field"]) == (400, "invalid_json", "body"), error
        assert "Expecting value at line 2, column 17 (offset 31)" in error["message"], error
        status, error = send(b'{"user": {"id": "\xff"}}')
        assert (status, error["code"]) == (400, "invalid_json") and "not UTF-8" in error["message"], error
        assert "line 1, column 18 (offset 17)" in error["message"], error
        status, error = send(b"[" * 5000 + b"]" * 5000)
        assert (status, error["code"]) == (400, "invalid_json") and "nested too deeply" in error["message"], error
        status, error = send(b'{"version": "1", "weights": [], "user": 3, "inputs": 3}')  # JSON, not the schema
        assert status == 422 and error["code"] == "invalid_request" and error["field"] != "body", error
        assert c.get("/metrics").text.count('ranker_errors_total{kind="invalid_json"} 3.0') == 1


def test_a_trailing_slash_is_a_404_in_the_error_shape_naming_the_path(client):
    r = client.post("/v1/rank/", json=request(n=2), follow_redirects=False)
    assert r.status_code == 404, (r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == "not_found" and "did you mean /v1/rank " in error["message"], error
    r = client.get("/v1/models/ple/", follow_redirects=False)
    assert r.status_code == 404 and "did you mean /v1/models/ple " in r.json()["error"]["message"]
    r = client.get("/v1/nothing/", follow_redirects=False)
    assert r.status_code == 404 and "did you mean" not in r.json()["error"]["message"]


@pytest.mark.parametrize("rank_thread", ["loop", "pool"])
def test_the_rank_runs_where_rank_thread_says_and_answers_the_same(trained, client, rank_thread):
    """RANKER_RANK_THREAD: `loop` ranks on the event loop (no thread hand-off), `pool` in the thread
    pool, which leaves the loop free to read other requests meanwhile. Same answer either way."""
    import asyncio

    app = create_app(Settings(models_dir=trained.models_dir, features_dir=trained.features_dir, watch="off",
                              rank_thread=rank_thread))  # fmt: skip
    with TestClient(app) as c:
        ranker = app.state.ranker
        on_loop = []
        original = ranker.rank

        def recording(*args, **kwargs):
            try:
                asyncio.get_running_loop()
                on_loop.append(True)
            except RuntimeError:  # no loop running in this thread: a pool thread
                on_loop.append(False)
            return original(*args, **kwargs)

        ranker.rank = recording
        got = c.post("/v1/rank", json=request(20))
    assert got.status_code == 200
    assert on_loop == [rank_thread == "loop"]
    assert got.json()["items"] == client.post("/v1/rank", json=request(20)).json()["items"]
