"""Paired comparisons over seeds: is model A better than model B, or is the difference noise?

Each seed trains both models (same split, same seed for initialisation and batch order), so the
per-seed differences are paired. Two views of them, both reported beside each claim:
- a paired t-test (two-sided p-value, Student's t with n - 1 degrees of freedom);
- a bootstrap confidence interval of the mean difference (resampling the seeds).
With 5 seeds neither is strong evidence of a small effect; the tables say how many seeds agree too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Paired:
    mean: float  # mean of A - B (positive: A better, for a metric where higher is better)
    std: float  # sample std of the differences
    wins: int  # seeds where A - B > 0
    n: int
    p_value: float  # paired t-test, two-sided
    low: float  # 95 % bootstrap interval of the mean difference
    high: float

    def verdict(self, alpha: float = 0.05) -> str:
        """'better' / 'worse' when the t-test and the interval agree at alpha, else 'tie (noise)'."""
        if self.p_value < alpha and self.low > 0:
            return "better"
        if self.p_value < alpha and self.high < 0:
            return "worse"
        return "no significant difference"

    def text(self, digits: int = 4) -> str:
        return (f"{self.mean:+.{digits}f} ± {self.std:.{digits}f} (95 % CI {self.low:+.{digits}f} to "
                f"{self.high:+.{digits}f}; ahead in {self.wins} of {self.n} seeds; paired t-test p = {self.p_value:.3f})")  # fmt: skip


def paired(a: Sequence[float], b: Sequence[float], resamples: int = 10_000, seed: int = 0) -> Paired:
    """A - B per seed (the i-th of each belong together)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) != len(b) or len(d) < 2:
        raise ValueError("paired() needs two equally long sequences of at least 2 seeds")
    sd = float(d.std(ddof=1))
    p = 1.0 if sd == 0 else float(stats.ttest_rel(a, b).pvalue)
    if sd == 0 and d.mean() != 0:
        p = 0.0  # every seed the same non-zero difference
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return Paired(float(d.mean()), sd, int((d > 0).sum()), len(d), p, float(low), float(high))
