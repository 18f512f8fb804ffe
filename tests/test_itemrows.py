"""The item-row cache (service/ranking/itemrows.py) and the Redis store's decoded-row memo: the
model's inputs are exactly the plain path's, a row rewritten in the store is encoded again, and
each version keeps its own cache."""

import gc
import random

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from contract.features import FeatureTransform
from contract.modelspec import ModelSpec
from service.app import create_app
from service.features.store import InProcessStore, RedisStore, load_tables, read_table, redis_client
from service.ranking.candidates import VIDEO_LEN, Candidates, raw_features
from service.ranking.itemrows import ItemRows
from service.schemas import RankRequest
from service.settings import Settings
from tests.conftest import REDIS_URL


@pytest.fixture(scope="module")
def transform(trained) -> FeatureTransform:
    return FeatureTransform(ModelSpec.model_validate_json((trained.version_dir / "model.json").read_bytes()).features)


@pytest.fixture
def tables(trained) -> InProcessStore:
    store = InProcessStore()
    load_tables(store, trained.features_dir)
    return store


def request(body: dict) -> tuple[RankRequest, Candidates]:
    req = RankRequest.model_validate(orjson.loads(orjson.dumps(body)))
    return req, Candidates.of(req.candidates)


def both(transform, cache: ItemRows, body: dict, user, items):
    """(cached encoding, lookup) and the plain path's encoding of the same request and store rows."""
    req, candidates = request(body)
    shared, per_row, _, _ = raw_features(transform, req, candidates, user, items)
    plain = transform.encode(len(candidates.ids), shared, per_row)
    video_len, _ = candidates.video_len(items, transform.dense_defaults.get(VIDEO_LEN))
    got = cache.encode(req, candidates, user, items, video_len)
    return got, plain


def assert_same(cached, plain):
    assert np.array_equal(cached.sparse_ids, plain.sparse_ids)
    assert np.array_equal(cached.dense, plain.dense)
    assert cached.defaulted == plain.defaulted


@pytest.mark.parametrize("capacity", [150, 10_000])
def test_cached_inputs_equal_the_plain_encoding(transform, tables, capacity):
    """Random requests over a small cache (so it clears) and a large one (so rewritten rows are cached
    ones): sent video_len or none, sent features (known, unknown, null), unknown items and users, user
    features and context, rows rewritten in between."""
    rng = random.Random(5)
    known = list(tables.tables["item"])
    cache = ItemRows(transform, capacity=capacity)
    clears = hits = 0
    for trial in range(60):
        unknown = 0 if trial % 5 == 4 else rng.randrange(3)  # a rewrite: every other row may be a cached one
        ids = rng.sample(known, 60) + [f"nobody{trial}-{k}" for k in range(unknown)]
        candidates = []
        for item_id in ids:
            c: dict = {"id": item_id}
            if rng.random() < 0.6:
                c["video_len"] = rng.choice([3.5, 61, 600.0])
            if rng.random() < 0.1:
                c["features"] = rng.choice([{"category": "music"}, {"category": "no-such"}, {"author_tier": None},
                                            {"video_id": "ignored"}, {"not_a_feature": 1}])  # fmt: skip
            candidates.append(c)
        user = rng.choice(["u1", "u7", "stranger"])
        body = {"user": {"id": user, "features": {"device": "ios"} if trial % 3 == 0 else {}},
                "context": {"hour": trial % 24}, "candidates": candidates}  # fmt: skip
        if trial % 5 == 4:  # the store rewrites a row this request names
            item_id = ids[0]
            tables.put("item", [(item_id, {**tables.tables["item"][item_id], "category": f"c{trial}"})])
        fetched = tables.fetch(user, ids)
        (cached, lookup), plain = both(transform, cache, body, fetched.user, fetched.items)
        assert_same(cached, plain)
        assert lookup.hits + lookup.misses == len(ids)
        clears += lookup.cleared
        hits += lookup.hits
    assert hits > 0 and (clears > 0) == (capacity < 400)  # the small cache was emptied, the large one never


def test_a_second_request_hits_and_a_rewritten_row_misses(transform, tables):
    cache = ItemRows(transform, capacity=1000)
    body = {"user": {"id": "u1"}, "candidates": [{"id": f"v{i}", "video_len": 20.0} for i in range(50)]}
    ids = [f"v{i}" for i in range(50)]
    for expected in ((0, 50), (50, 0)):
        fetched = tables.fetch("u1", ids)
        (cached, lookup), plain = both(transform, cache, body, fetched.user, fetched.items)
        assert (lookup.hits, lookup.misses) == expected
    tables.put("item", [("v3", {**tables.tables["item"]["v3"], "author_tier": "star", "video_age_days": 400.0})])
    fetched = tables.fetch("u1", ids)
    (cached, lookup), plain = both(transform, cache, body, fetched.user, fetched.items)
    assert (lookup.hits, lookup.misses) == (49, 1)
    assert_same(cached, plain)


def test_what_the_cache_cannot_answer_goes_to_the_plain_path(transform, tables):
    cache = ItemRows(transform, capacity=10)
    ids = [f"v{i}" for i in range(11)]
    fetched = tables.fetch("u1", ids)
    body = {"user": {"id": "u1"}, "candidates": [{"id": i} for i in ids]}
    assert both(transform, cache, body, fetched.user, fetched.items)[0] is None  # more rows than it holds
    # A store value the transform refuses: the plain path reports it (and scrubs it); nothing is cached.
    broken = [dict(fetched.items[0], video_age_days="not a number")]
    body = {"user": {"id": "u1"}, "candidates": [{"id": "v0"}]}
    req, candidates = request(body)
    assert cache.encode(req, candidates, fetched.user, broken, np.array([30.0])) is None
    assert len(cache) == 0
    # A value a candidate sent that the transform refuses: the plain path answers the 422.
    req, candidates = request({"user": {"id": "u1"}, "candidates": [{"id": "v0", "features": {"video_age_days": "x"}}]})
    assert cache.encode(req, candidates, fetched.user, fetched.items[:1], np.array([30.0])) is None


def test_the_redis_memo_hands_back_one_object_per_unchanged_row(trained, redis_prefix):
    store = RedisStore(redis_client(REDIS_URL, 1.0), redis_prefix, memo_rows=100)
    load_tables(store, trained.features_dir)
    ids = ["v1", "v2", "missing"]
    first, second = store.fetch("u1", ids), store.fetch("u1", ids)
    assert first.items[0] is second.items[0] and first.items[2] is None
    assert first.user is not second.user  # users are not memoised: each request has another one
    store.put("item", [("v1", {"category": "music", "video_len": 30.0})])
    third = store.fetch("u1", ids)
    assert third.items[0] == {"category": "music", "video_len": 30.0} and third.items[1] is first.items[1]
    # Past memo_rows the memo starts again; rows stay right.
    items = [row_id for row_id, _ in read_table(trained.features_dir / "items.jsonl")][:150]
    rows = store.fetch("u1", items).items
    assert len(store._decoded) <= 100 + len(items) and rows == [store.fetch("u1", [i]).items[0] for i in items]
    # A corrupt row is read as unknown and never remembered.
    store.client.set(store.key("item", "v2"), b"{not json")
    assert store.fetch("u1", ids).corrupt == 1 and store.fetch("u1", ids).items[1] is None


def metric(client, name: str, **labels) -> float:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return sum(s.value for f in families for s in f.samples if s.name == name and labels.items() <= s.labels.items())


BODY = {"user": {"id": "u3"}, "context": {"hour": 8},
        "candidates": [{"id": f"v{i}", "video_len": 15.0 + i} for i in range(30)] + [{"id": "v404x"}]}  # fmt: skip


def test_served_answers_are_the_same_with_and_without_the_cache_through_redis(trained, redis_prefix):
    """Served from the Redis store: equal answers with the cache on and off; the hit counter moves; a row
    rewritten by the loader changes the next answer as it does without the cache."""
    answers = {}
    for rows in (0, 1000):
        settings = Settings(models_dir=trained.models_dir, features_dir=None, redis_url=REDIS_URL,
                            redis_prefix=redis_prefix, item_cache_rows=rows, watch="off")  # fmt: skip
        with TestClient(create_app(settings)) as c:
            store = RedisStore(redis_client(REDIS_URL, 1.0), redis_prefix)
            load_tables(store, trained.features_dir)
            first, second = c.post("/v1/rank", json=BODY).json(), c.post("/v1/rank", json=BODY).json()
            store.put("item", [("v5", {"category": "gaming", "author_tier": "star", "video_age_days": 900.0})])
            third = c.post("/v1/rank", json=BODY).json()
            answers[rows] = (first, second, third)
            hits, misses = (metric(c, "ranker_item_rows_total", result=r) for r in ("hit", "miss"))
            assert (hits, misses) == ((0, 0) if rows == 0 else (30 + 31, 31 + 1))
            store.client.delete(*store.client.keys(f"{redis_prefix}feat:*"))
    strip = lambda answer: {k: v for k, v in answer.items() if k != "request_id"}  # noqa: E731
    for off, on in zip(answers[0], answers[1000]):
        assert strip(off) == strip(on)
    first, _, third = answers[1000]
    assert [i for i in first["items"] if i["id"] == "v5"] != [i for i in third["items"] if i["id"] == "v5"]


def test_each_version_has_its_own_cache_which_goes_with_it(repo):
    settings = Settings(models_dir=repo, features_dir=None, admin_token="t" * 32, watch="off")
    auth = {"Authorization": "Bearer " + "t" * 32}
    body = {"user": {"id": "u1"}, "candidates": [{"id": "a", "video_len": 3.0}, {"id": "b", "video_len": 4.0}]}
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/admin/models/ple/versions/1/load", headers=auth).status_code == 200
        for version in (1, 2):
            assert c.post("/v1/rank", json={**body, "version": version}).status_code == 200
        caches = c.app.state.ranker._item_rows
        assert sorted(mv.version for mv in caches) == [1, 2] and all(len(rows) == 2 for rows in caches.values())
        assert c.delete("/v1/admin/models/ple/versions/1", headers=auth).status_code == 200
        gc.collect()
        assert [mv.version for mv in caches] == [2]
