"""service.ranking.candidates: the column-wise reading keeps the per-candidate rules, errors and fields."""

import math

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.errors import status_of
from service.app import create_app
from service.problems import Problem
from service.ranking.candidates import EMPTY, Candidates
from service.settings import Settings


def error(call) -> tuple[int, str, str]:
    with pytest.raises(Problem) as caught:
        call()
    return status_of(caught.value), caught.value.code, caught.value.field


def test_the_first_repeated_id_is_named():
    c = Candidates.of([{"id": "a"}, {"id": "b"}, {"id": "c"}, {"id": "b"}, {"id": "a"}])
    assert error(c.check_ids) == (422, "duplicate_candidate", "candidates[3].id")
    Candidates.of([{"id": "a"}, {"id": "A"}]).check_ids()


def test_the_first_candidate_over_the_feature_limit_is_named():
    c = Candidates.of([{"id": "a", "features": {"x": 1}}, {"id": "b", "features": {"x": 1, "y": 2, "z": 3}},
                       {"id": "c", "features": {"x": 1, "y": 2, "z": 3, "w": 4}}])  # fmt: skip
    assert error(lambda: c.check_feature_counts(2)) == (422, "too_many_features", "candidates[1].features")
    c.check_feature_counts(4)
    Candidates.of([{"id": "a"}]).check_feature_counts(0)


def test_video_len_is_the_requests_then_its_features_then_the_stores():
    c = Candidates.of([{"id": "a", "video_len": 3.5, "features": {"video_len": 8.0}}, {"id": "b"},
                       {"id": "c", "video_len": None}, {"id": "d"}, {"id": "e", "features": {"video_len": 40}}])  # fmt: skip
    stored = [{"video_len": 99.0}, {"video_len": 12}, {"video_len": 7.5}, {"video_len": True}, {"video_len": 5.0}]
    lengths, defaulted = c.video_len(stored)
    assert lengths.tolist() == [3.5, 12.0, 7.5, 1.0, 40.0]  # True counts as 1, as it always has
    assert defaulted == 0


@pytest.mark.parametrize("stored", [None, "long", 0, -1.0, math.inf, math.nan, [3.0], 10**400])
def test_no_usable_video_len_takes_the_schemas_default_and_is_counted(stored):
    c = Candidates.of([{"id": "a", "video_len": 3.0}, {"id": "b"}, {"id": "c"}])
    rows = [EMPTY, {"video_len": stored}, {"video_len": 8.0}]
    lengths, defaulted = c.video_len(rows, default=30.0)
    assert (lengths.tolist(), defaulted) == ([3.0, 30.0, 8.0], 1)
    # A model whose schema has no video_len (nothing to default to): 422 naming the first candidate.
    assert error(lambda: c.video_len(rows)) == (422, "missing_video_len", "candidates[1].video_len")


@pytest.mark.parametrize("sent", ["35", 0, -2.0, [3.0], True, 10**400])
def test_a_video_len_sent_among_the_features_must_be_a_length(sent):
    c = Candidates.of([{"id": "a", "features": {"video_len": sent}}])
    if sent is True:  # as for stored values: True reads as 1 second
        assert c.video_len([EMPTY])[0].tolist() == [1.0]
        return
    assert error(lambda: c.video_len([{"video_len": 10.0}])) == (422, "invalid_video_len", "candidates[0].features.video_len")


def test_a_feature_sent_with_a_candidate_wins_over_the_store_even_when_null():
    c = Candidates.of([{"id": "a", "features": {"category": "music"}}, {"id": "b"},
                       {"id": "c", "features": {"category": None}}, {"id": "d", "features": {"other": 1}}])  # fmt: skip
    stored = [{"category": "news"}, {"category": "food"}, {"category": "pets"}, EMPTY]
    assert c.feature("category", stored) == ["music", "food", None, None]
    nothing_sent = Candidates.of([{"id": "a"}, {"id": "b"}])
    assert nothing_sent.feature("category", [{"category": "news"}, EMPTY]) == ["news", None]
    assert np.isnan(nothing_sent.sent_video_len).all() and EMPTY == {}


def test_limit_errors_keep_their_order_and_fields(trained):
    settings = Settings(models_dir=trained.models_dir, features_dir=trained.features_dir, max_features=2)
    many = {"a": 1, "b": 2, "c": 3}
    with TestClient(create_app(settings)) as client:

        def field(body):
            r = client.post("/v1/rank", json={"user": {"id": "u1"}, **body})
            assert r.status_code == 422, r.text
            return r.json()["error"]["field"]

        dup = [{"id": "a", "video_len": 3.0}, {"id": "a", "video_len": 3.0, "features": many}]
        assert field({"candidates": dup, "context": many}) == "candidates[1].id"  # repeated ids first
        one = [{"id": "a", "video_len": 3.0, "features": many}]
        assert field({"candidates": one, "context": many}) == "context"  # then user and context
        two = [{"id": "a", "video_len": 3.0}, {"id": "b", "video_len": 3.0, "features": many}]
        assert field({"candidates": two}) == "candidates[1].features"  # then each candidate
