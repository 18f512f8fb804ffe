"""The MMoE paper's synthetic data (Ma et al., KDD 2018, Section 3.2): two regression tasks whose
correlation is controlled by p.

1. u1, u2: orthogonal unit vectors in R^d.
2. w1 = c * u1,  w2 = c * (p * u1 + sqrt(1 - p^2) * u2), so cos(w1, w2) = p.
3. x ~ N(0, I_d).
4. y_k = w_k . x + sum_{i=1..m} sin(alpha_i * w_k . x + beta_i) + eps_k,  eps_k ~ N(0, 0.01),
   with alpha_i, beta_i drawn once (N(0, 1)) and shared by both tasks.
The sinusoids make the label correlation a non-linear function of p; the Pearson correlation of
y1 and y2 rises with p.
"""

from __future__ import annotations

import numpy as np
from pydantic.dataclasses import dataclass as pydantic_dataclass

from contract.modelspec import FeatureSpec, TaskSpec
from training.data import Dataset
from training.settings_types import STRICT

TASKS = [
    TaskSpec(name="y1", kind="regression", label="task 1: w1.x + sinusoids + noise", output="y1"),
    TaskSpec(name="y2", kind="regression", label="task 2: w2.x + sinusoids + noise (cos(w1, w2) = p)", output="y2"),
]


@pydantic_dataclass(frozen=True, config=STRICT)
class SyntheticConfig:
    """The generator's options ([data.synthetic] in a run's config); checked when made."""

    n: int = 20_000  # rows
    d: int = 100  # input dimension
    c: float = 1.0  # scale of the weight vectors
    m: int = 10  # number of sinusoids
    p: float = 0.5  # cosine of the two tasks' weight vectors, in [-1, 1]
    noise_var: float = 0.01
    seed: int = 0
    # Rows for training; the rest is split equally into validation and test. None: 80/10/10, the
    # default of every data set. The MMoE paper trains on 10,000 rows.
    train_rows: int | None = None


def weight_vectors(d: int, c: float, p: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """w1, w2 of norm c with cos(w1, w2) = p (steps 1-2)."""
    if not -1.0 <= p <= 1.0:
        raise ValueError("p is a cosine: it must lie in [-1, 1]")
    q, _ = np.linalg.qr(rng.standard_normal((d, 2)))  # two orthonormal columns
    u1, u2 = q[:, 0], q[:, 1]
    return c * u1, c * (p * u1 + np.sqrt(1.0 - p * p) * u2)


def generate(config: SyntheticConfig = SyntheticConfig()) -> Dataset:
    rng = np.random.default_rng(config.seed)
    w1, w2 = weight_vectors(config.d, config.c, config.p, rng)
    alpha, beta = rng.standard_normal(config.m), rng.standard_normal(config.m)
    x = rng.standard_normal((config.n, config.d))  # (N, d)
    labels = []
    for w in (w1, w2):
        z = x @ w  # (N,)
        sinusoids = np.sin(alpha[None, :] * z[:, None] + beta[None, :]).sum(axis=1)
        labels.append(z + sinusoids + rng.normal(0.0, np.sqrt(config.noise_var), config.n))
    features = [FeatureSpec(name=f"x{i}", kind="dense", source="context", default=0.0) for i in range(config.d)]
    cfg = config
    return Dataset(
        name="synthetic",
        description=(f"MMoE Sec. 3.2 synthetic regression: n={cfg.n}, d={cfg.d}, c={cfg.c}, m={cfg.m}, "
                     f"p={cfg.p}, noise variance {cfg.noise_var} (training.data.synthetic, seed {cfg.seed})"),  # fmt: skip
        features=features,
        tasks=TASKS,
        columns={f"x{i}": x[:, i] for i in range(config.d)},
        labels=np.stack(labels, axis=1).astype(np.float32),
        masks=np.ones((config.n, 2), dtype=bool),
        seed=config.seed,
        default_weights={},
        **({"split_fractions": _fractions(config)} if config.train_rows is not None else {}),
    )


def _fractions(config: SyntheticConfig) -> tuple[float, float]:
    """(train, validation) shares for `train_rows` training rows and the rest halved."""
    if not 0 < config.train_rows < config.n:  # type: ignore[operator]
        raise ValueError(f"train_rows={config.train_rows} must lie between 0 and n={config.n}")
    train = config.train_rows / config.n  # type: ignore[operator]
    return train, (1.0 - train) / 2
