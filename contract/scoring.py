"""The ranking formula, pure NumPy: score = prod_k p_k^w_k * f(video_len), computed in log space.

log s = sum_k w_k * log(clip(p_k, eps, 1)) + log f(video_len); ties keep the candidates' order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from contract.modelspec import LogTransform, NoneTransform, PowerTransform, SigmoidTransform


def log_video_len_factor(transform, video_len: np.ndarray) -> np.ndarray:
    """log f(video_len), evaluated stably so f > 0 never underflows to log(0) for len > 0."""
    length = np.asarray(video_len, dtype=np.float64)
    if isinstance(transform, NoneTransform):
        return np.zeros_like(length)
    if isinstance(transform, LogTransform):
        # f = log(1 + len/tau) = softplus(z) with z = log(len/tau); for very small z, softplus(z) ~ e^z.
        z = np.log(length) - np.log(transform.tau)
        with np.errstate(divide="ignore"):
            return np.where(z < -30.0, z, np.log(np.logaddexp(0.0, z)))
    if isinstance(transform, SigmoidTransform):
        return -np.logaddexp(0.0, -(length - transform.mu) / transform.s)
    if isinstance(transform, PowerTransform):
        return transform.alpha * np.log(length)
    raise TypeError(f"unknown video length transform {transform!r}")


# The largest log of a finite float64 (log(1.797e308)). A score or f(video_len) above it would
# read inf (null in JSON); one below -745 rounds to 0.0, which is still a number, and the order,
# taken from the log score, stays exact.
LOG_FLOAT_MAX = float(np.log(np.finfo(np.float64).max))


class ScoreOverflow(ValueError):
    """f(video_len) past the float64 range for one candidate (a power transform on an extreme length)."""

    def __init__(self, index: int, video_len: float):
        super().__init__(f"f(video_len) overflows float64 for video_len={video_len!r}")
        self.index, self.video_len = index, video_len


@dataclass(frozen=True)
class Ranking:
    order: np.ndarray  # (B,) candidate indices, best first
    log_score: np.ndarray  # (B,) in candidate order
    log_factors: dict[str, np.ndarray]  # task -> (B,) w_k * log(clip(p_k)), tasks with w_k > 0 only
    log_f_video_len: np.ndarray  # (B,)


def rank(
    task_values: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    video_len: np.ndarray,
    transform,
    eps: float = 1e-6,
) -> Ranking:
    """Rank B candidates from per-task model outputs (each (B,)) and per-task weights.

    Tasks with weight 0 drop out entirely; a NaN output counts as eps (the worst value).
    Raises ScoreOverflow where f(video_len) is past the float64 range.
    """
    log_f = log_video_len_factor(transform, video_len)
    if len(log_f) and log_f.max() > LOG_FLOAT_MAX:  # p_k^w_k <= 1, so only f can overflow
        index = int(np.argmax(log_f))
        raise ScoreOverflow(index, float(video_len[index]))
    log_score = log_f.copy()
    log_factors = {}
    for task, w in weights.items():
        if w == 0:
            continue
        # fmax drops NaN for eps, so this is clip(nan_to_num(p, nan=eps), eps, 1) at a quarter of the cost.
        p = np.minimum(np.fmax(np.asarray(task_values[task], dtype=np.float64), eps), 1.0)
        log_factors[task] = w * np.log(p)
        log_score += log_factors[task]
    order = np.argsort(-log_score, kind="stable")
    return Ranking(order=order, log_score=log_score, log_factors=log_factors, log_f_video_len=log_f)

