import numpy as np
import pytest

from contract.modelspec import LogTransform, NoneTransform, PowerTransform, SigmoidTransform
from contract.scoring import ScoreOverflow, log_video_len_factor, rank

TRANSFORMS = [NoneTransform(), LogTransform(tau=45.0), SigmoidTransform(mu=20.0, s=8.0), PowerTransform(alpha=-0.4)]


def reference_f(transform, length):
    """f(video_len) written directly from its definition (docs/api.md), not in log space."""
    if transform.kind == "none":
        return np.ones_like(length)
    if transform.kind == "log":
        return np.log1p(length / transform.tau)  # log(1 + x), without the rounding of 1 + x
    if transform.kind == "sigmoid":
        return 1 / (1 + np.exp(-(length - transform.mu) / transform.s))
    return length**transform.alpha


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: t.kind)
def test_order_and_scores_match_a_numpy_reference(transform):
    rng = np.random.default_rng(0)
    n = 300
    values = {t: rng.uniform(0.001, 1, n) for t in ("ctr", "vtr", "vcr", "shr")}
    weights = {"ctr": 1.0, "vtr": 0.7, "vcr": 0.3, "shr": 0.0}
    length = rng.uniform(2, 400, n)
    reference = reference_f(transform, length)
    for task, w in weights.items():
        reference = reference * values[task] ** w
    ranking = rank(values, weights, length, transform)
    np.testing.assert_allclose(np.exp(ranking.log_score), reference, rtol=1e-10)
    np.testing.assert_array_equal(ranking.order, np.argsort(-reference, kind="stable"))


def test_weights_change_the_order_as_the_formula_says():
    values = {"ctr": np.array([0.9, 0.3]), "vtr": np.array([0.1, 0.8])}
    length = np.array([30.0, 30.0])
    assert rank(values, {"ctr": 2.0, "vtr": 0.5}, length, NoneTransform()).order.tolist() == [0, 1]
    assert rank(values, {"ctr": 0.5, "vtr": 2.0}, length, NoneTransform()).order.tolist() == [1, 0]


def test_weight_zero_drops_the_task_even_at_probability_zero():
    values = {"ctr": np.array([0.5, 0.4]), "shr": np.array([0.0, 0.9])}
    ranking = rank(values, {"ctr": 1.0, "shr": 0.0}, np.array([10.0, 10.0]), NoneTransform())
    assert ranking.order.tolist() == [0, 1]
    assert "shr" not in ranking.log_factors
    np.testing.assert_allclose(np.exp(ranking.log_score), [0.5, 0.4])


def test_probabilities_are_clipped_at_eps():
    values = {"ctr": np.array([0.0, 1e-12, 0.5])}
    ranking = rank(values, {"ctr": 1.0}, np.ones(3), NoneTransform(), eps=1e-6)
    np.testing.assert_allclose(np.exp(ranking.log_score), [1e-6, 1e-6, 0.5])


def test_nan_and_out_of_range_outputs_count_exactly_as_clip_of_nan_to_num():
    eps = 1e-6
    p = np.array([np.nan, np.inf, -np.inf, 2.0, 1.0, 0.5, 1e-9, 0.0, -3.0], dtype=np.float32)
    ranking = rank({"ctr": p}, {"ctr": 0.7}, np.full(len(p), 30.0), NoneTransform(), eps)
    expected = 0.7 * np.log(np.clip(np.nan_to_num(p.astype(np.float64), nan=eps), eps, 1.0))
    assert ranking.log_factors["ctr"].tobytes() == expected.tobytes()  # bit for bit


def test_ties_keep_request_order():
    values = {"ctr": np.array([0.2, 0.5, 0.2, 0.5, 0.2])}
    ranking = rank(values, {"ctr": 1.0}, np.full(5, 12.0), LogTransform())
    assert ranking.order.tolist() == [1, 3, 0, 2, 4]


def test_video_length_transforms_change_the_order():
    values = {"ctr": np.array([0.5, 0.5])}
    length = np.array([10.0, 200.0])  # a short and a long video, equally likely to be clicked
    assert rank(values, {"ctr": 1.0}, length, LogTransform(tau=60)).order.tolist() == [1, 0]
    assert rank(values, {"ctr": 1.0}, length, PowerTransform(alpha=-0.5)).order.tolist() == [0, 1]


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: t.kind)
def test_f_stays_positive_and_finite_for_every_allowed_length(transform):
    length = np.array([5e-324, 1e-300, 1e-9, 1.0, 1e6, 1e300])
    log_f = log_video_len_factor(transform, length)
    assert np.all(np.isfinite(log_f))
    middle = length[2:5]
    np.testing.assert_allclose(np.exp(log_video_len_factor(transform, middle)), reference_f(transform, middle), rtol=1e-9)


def test_an_f_past_the_float_range_is_refused_not_returned_as_inf():
    values = {"ctr": np.array([0.5, 0.5, 0.5])}
    with pytest.raises(ScoreOverflow) as caught:
        rank(values, {"ctr": 1.0}, np.array([10.0, 1e300, 1e200]), PowerTransform(alpha=5.0))
    assert (caught.value.index, caught.value.video_len) == (1, 1e300)
    ranking = rank(values, {"ctr": 1.0}, np.array([10.0, 1e61, 1e300]), PowerTransform(alpha=-5.0))
    assert ranking.order.tolist() == [0, 1, 2] and np.isfinite(ranking.log_score).all()
