import os
import subprocess
import sys

import numpy as np
import pytest

from contract.features import MISSING_ID, FeatureTransform, FeatureValueError, fit_dense, stable_hash
from contract.modelspec import FeatureSpec
from service.features.store import InProcessStore
from service.ranking.candidates import Candidates, raw_features
from service.schemas import RankRequest
from training.data import videolog
from training.train import encode, fit_features

SPECS = [
    FeatureSpec(name="uid", kind="sparse", source="user", buckets=1000, from_id=True),
    FeatureSpec(name="tier", kind="sparse", source="user", vocabulary=["a", "b"]),
    FeatureSpec(name="hour", kind="sparse", source="context", buckets=50),
    FeatureSpec(name="len", kind="dense", source="item", default=10.0, log1p=True, clip_min=0.0, mean=2.0, std=0.5),
]


def test_stable_hash_is_identical_across_processes():
    code = "from contract.features import stable_hash; print(stable_hash('music'), stable_hash('u42'))"
    outputs = set()
    for seed in ("1", "2", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outputs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert outputs == {f"{stable_hash('music')} {stable_hash('u42')}\n"}


def test_equal_values_of_different_types_share_an_id_and_missing_maps_to_zero():
    t = FeatureTransform(SPECS)
    hour = SPECS[2]
    assert t.sparse_id(hour, 21) == t.sparse_id(hour, 21.0) == t.sparse_id(hour, "21") != MISSING_ID
    assert t.sparse_id(hour, None) == MISSING_ID
    assert t.sparse_id(hour, "") == MISSING_ID
    assert t.sparse_id(SPECS[1], "b") == 2
    assert t.sparse_id(SPECS[1], "zzz") == MISSING_ID  # unknown vocabulary value


def test_dense_missing_takes_the_default_and_is_counted():
    t = FeatureTransform(SPECS)
    enc = t.encode(3, shared={"uid": "u1", "tier": "a", "hour": 3}, per_row={"len": [10.0, None, 0.5]})
    expected = (np.log1p([10.0, 10.0, 0.5]) - 2.0) / 0.5
    np.testing.assert_allclose(enc.dense[:, 0], expected, rtol=1e-6)
    assert enc.defaulted == 1
    assert enc.sparse_ids.dtype == np.int64 and enc.dense.dtype == np.float32


def test_shared_values_broadcast_like_repeated_rows():
    t = FeatureTransform(SPECS)
    shared = {"uid": "u9", "tier": "b", "hour": 7}
    a = t.encode(4, shared=shared, per_row={"len": [1.0, 2.0, 3.0, 4.0]})
    b = t.encode(4, per_row={**{k: [v] * 4 for k, v in shared.items()}, "len": [1.0, 2.0, 3.0, 4.0]})
    np.testing.assert_array_equal(a.sparse_ids, b.sparse_ids)
    np.testing.assert_array_equal(a.dense, b.dense)


@pytest.mark.parametrize("bad", ["abc", float("inf"), [1, 2], 10**400, -(10**309)])
def test_non_numeric_dense_values_are_rejected_with_the_feature_name_and_row(bad):
    with pytest.raises(FeatureValueError) as info:
        FeatureTransform(SPECS).encode(3, per_row={"len": [1.0, bad, 2.0]})
    assert (info.value.feature, info.value.row) == ("len", 1)
    assert len(str(info.value)) < 100  # a 400-digit value is cut short in the message
    with pytest.raises(FeatureValueError) as info:
        FeatureTransform(SPECS).encode(3, shared={"len": bad})
    assert (info.value.feature, info.value.row) == ("len", None)


def test_usable_or_none_keeps_numbers_and_drops_the_rest():
    from contract.features import usable_or_none

    assert usable_or_none("len", [1, "2.5", None, "abc", 10**400, True, [1]]) == [1, "2.5", None, None, None, True, None]


def test_fit_dense_standardises_training_values():
    spec = fit_dense(SPECS[3], [1.0, 3.0, None, 7.0])
    x = np.log1p([1.0, 3.0, 10.0, 7.0])
    assert spec.mean == pytest.approx(x.mean()) and spec.std == pytest.approx(x.std())


def test_training_and_serving_encode_the_same_raw_record_identically():
    """A logged impression, encoded by the trainer and sent through the service's request path."""
    log = videolog.simulate(videolog.VideoLogConfig(n_users=50, n_videos=60, n_impressions=500, seed=11))
    data = videolog.to_dataset(log)
    transform = FeatureTransform(fit_features(data))
    store = InProcessStore()
    store.put("user", zip(log.users.index, log.users.to_dict("records")))
    store.put("item", zip(log.videos.index, log.videos.to_dict("records")))
    rows = np.arange(0, 500, 37)
    trained = encode(transform, data.subset(rows))
    for out_row, i in enumerate(rows):
        imp = log.impressions.iloc[i]
        req = RankRequest.model_validate({
            "user": {"id": imp["user_id"]},
            "context": {"network": imp["network"], "hour": int(imp["hour"])},
            "candidates": [{"id": imp["video_id"]}],
        })
        candidates = Candidates.of(req.candidates)
        fetched = store.fetch(req.user.id, candidates.ids)
        shared, per_row, _, _ = raw_features(transform, req, candidates, fetched.user, fetched.items)
        served = transform.encode(1, shared, per_row)
        np.testing.assert_array_equal(served.sparse_ids[0], trained.sparse_ids[out_row])
        np.testing.assert_array_equal(served.dense[0], trained.dense[out_row])


def test_remembered_strings_never_change_ids_of_equal_values_of_other_types():
    t = FeatureTransform(SPECS)
    hour = SPECS[2]
    column = ["1", True, 1, 1.0, "true", None, "1", True]
    expected = [t.sparse_id(hour, v) for v in column]
    for _ in range(2):  # the second pass answers strings from the cache
        got = t.encode(len(column), per_row={"hour": column}).sparse_ids[:, 2].tolist()
        assert got == expected
    assert expected[0] == expected[2] == expected[3] != expected[1] == expected[4]


def test_a_nested_value_for_a_categorical_feature_counts_as_missing():
    t = FeatureTransform(SPECS)
    nested = t.encode(3, per_row={"tier": [{"a": 1}, ["b"], "b"]})
    missing = t.encode(3, per_row={"tier": [None, None, "b"]})
    np.testing.assert_array_equal(nested.sparse_ids, missing.sparse_ids)
    assert nested.defaulted == missing.defaulted
