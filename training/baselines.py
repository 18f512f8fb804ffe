"""The baselines a reviewer tries first: one LightGBM model per task, and a linear model per task.

Both see the networks' split and raw features: every categorical as its id from the same feature
schema (a vocabulary index or hash bucket; LightGBM treats it as a category, the linear model
one-hot encodes it), every number as read (LightGBM: raw, missing left missing, which trees handle
natively; the linear model: the networks' standardised value). Each task is fitted on its own
sample space; binary tasks are classifiers, regressions regressors (clipped to the task's range).
`ranker-tune --model lightgbm|logistic` tunes them per task with Optuna, the same number of trials
per task as a network gets in all; the experiments rerun the best settings over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.features import FeatureTransform, encode_number
from training.data import Dataset
from training.evaluate import task_metrics
from training.search_space import Choice, Float, Int, Space, sample
from training.train import fit_features

LIGHTGBM_SEARCH: Space = {
    "num_leaves": Int(8, 256),
    "learning_rate": Float(0.01, 0.2, log=True),
    "min_child_samples": Int(5, 200),
    "feature_fraction": Float(0.4, 1.0),
    "bagging_fraction": Float(0.5, 1.0),
    "lambda_l2": Float(1e-8, 10.0, log=True),
    "cat_smooth": Float(1.0, 50.0, log=True),
}
LOGISTIC_SEARCH: Space = {"C": Float(1e-3, 100.0, log=True), "min_frequency": Choice((1, 5, 20))}
MAX_ROUNDS, EARLY_STOP = 3000, 50


@dataclass
class Columns:
    """A split's features as the baselines read them."""

    categorical: np.ndarray  # (N, S) int ids from the feature schema (0 = missing)
    numbers: np.ndarray  # (N, D) float64 raw values, NaN where missing
    standardised: np.ndarray  # (N, D') the networks' dense input


def columns(transform: FeatureTransform, data: Dataset) -> Columns:
    enc = transform.encode(len(data), per_row=data.columns)
    raw = [np.asarray(data.columns[s.name], dtype=np.float64) for s in transform.dense]
    numbers = np.stack(raw, axis=1) if raw else np.zeros((len(data), 0))
    standard = [encode_number(s.model_copy(update={"encoding": "standard", "edges": None}),
                              np.where(np.isnan(r), float(s.default), r)) for s, r in zip(transform.dense, raw)]  # fmt: skip
    return Columns(enc.sparse_ids[:, : len(transform.sparse)], numbers,
                   np.concatenate(standard, axis=1) if standard else np.zeros((len(data), 0)))  # fmt: skip


def _lightgbm(task, params: dict, train: Columns, y: np.ndarray, val: Columns, y_val: np.ndarray, seed: int):
    import lightgbm as lgb

    def frame(c: Columns) -> np.ndarray:
        return np.concatenate([c.categorical.astype(np.float64), c.numbers], axis=1)

    categorical = list(range(train.categorical.shape[1]))
    binary = task.kind == "binary"
    settings = {"objective": "binary" if binary else "regression", "verbosity": -1, "seed": seed,
                "bagging_freq": 1, "num_threads": 1, "max_cat_to_onehot": 8, **params}  # fmt: skip
    model = lgb.train(settings, lgb.Dataset(frame(train), y, categorical_feature=categorical), MAX_ROUNDS,
                      valid_sets=[lgb.Dataset(frame(val), y_val, categorical_feature=categorical)],
                      callbacks=[lgb.early_stopping(EARLY_STOP, verbose=False)])  # fmt: skip
    def predict(c: Columns) -> np.ndarray:
        return model.predict(frame(c), num_iteration=model.best_iteration)

    predict.booster = model  # what importance() reads
    return predict


def _linear(task, params: dict, train: Columns, y: np.ndarray, val: Columns, y_val: np.ndarray, seed: int):
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import OneHotEncoder

    onehot = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=params["min_frequency"])
    onehot.fit(train.categorical)

    def design(c: Columns):
        return sparse.hstack([onehot.transform(c.categorical), sparse.csr_matrix(c.standardised)]).tocsr()

    if task.kind == "binary":
        model = LogisticRegression(C=params["C"], max_iter=2000, random_state=seed).fit(design(train), y)
        return lambda c: model.predict_proba(design(c))[:, 1]
    model = Ridge(alpha=1.0 / params["C"], random_state=seed).fit(design(train), y)
    return lambda c: np.clip(model.predict(design(c)), *(task.value_range or (-np.inf, np.inf)))


FITTERS = {"lightgbm": _lightgbm, "logistic": _linear}
SEARCHES = {"lightgbm": LIGHTGBM_SEARCH, "logistic": LOGISTIC_SEARCH}


class Splits:
    """The data set's split, fitted and read once, for every fit of every task."""

    def __init__(self, dataset: Dataset, split_seed: int | None = None):
        self.tasks = dataset.tasks
        self.train, self.val, self.test = dataset.split(seed=split_seed if split_seed is not None else (dataset.seed or 0))
        transform = FeatureTransform(fit_features(self.train))
        self.names = [s.name for s in transform.sparse] + [s.name for s in transform.dense]  # LightGBM's column order
        self.cols = {name: columns(transform, part) for name, part in
                     (("train", self.train), ("validation", self.val), ("test", self.test))}  # fmt: skip

    def task_rows(self, split: str, k: int) -> tuple[Columns, np.ndarray]:
        part = {"train": self.train, "validation": self.val, "test": self.test}[split]
        inside = part.masks[:, k]
        c = self.cols[split]
        return Columns(c.categorical[inside], c.numbers[inside], c.standardised[inside]), part.labels[inside, k]

    def fit_task(self, kind: str, k: int, params: dict, seed: int = 0):
        train, y = self.task_rows("train", k)
        val, y_val = self.task_rows("validation", k)
        return FITTERS[kind](self.tasks[k], params, train, y, val, y_val, seed)

    def importance(self, k: int, params: dict, seed: int = 0) -> dict[str, float]:
        """LightGBM's split gain per feature for task k, as shares of the total (what the trees use)."""
        gain = self.fit_task("lightgbm", k, params, seed).booster.feature_importance("gain")
        total = float(gain.sum()) or 1.0
        return dict(sorted(((n, float(g) / total) for n, g in zip(self.names, gain)), key=lambda item: -item[1]))

    def evaluate(self, kind: str, params: dict[str, dict], seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
        """Per split and task, the metrics of the networks (training/evaluate.py) for one model per task."""
        predictors = [self.fit_task(kind, k, params[t.name], seed) for k, t in enumerate(self.tasks)]
        out = {}
        for split in ("validation", "test"):
            part = {"validation": self.val, "test": self.test}[split]
            pred = np.stack([p(self.cols[split]) for p in predictors], axis=1)
            out[split] = task_metrics(pred, part.labels, part.masks, self.tasks)
        return out


def validation_loss(task, predictor, val: Columns, y: np.ndarray) -> float:
    p = predictor(val)
    if task.kind == "binary":
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return float(np.mean((p - y) ** 2))


def tune_baseline(kind: str, dataset: Dataset, cfg, study: str, storage: str, trials: int, seed: int,
                  progress: bool) -> dict[str, Any]:  # fmt: skip
    """One Optuna study per task (`<study>.<task>`); the best settings as TOML tables."""
    from training.tune import run_study

    splits = Splits(dataset, cfg.train.split_seed)
    params: dict[str, dict] = {}
    for k, task in enumerate(dataset.tasks):
        val, y_val = splits.task_rows("validation", k)

        def objective(trial, k=k, task=task, val=val, y_val=y_val):
            return validation_loss(task, splits.fit_task(kind, k, sample(trial, kind, SEARCHES[kind]), seed), val, y_val)

        best = run_study(f"{study}.{task.name}", storage, objective, trials, seed, progress).best_params
        params[task.name] = {name.split(".", 1)[1]: value for name, value in best.items()}
    return {"run": {"data": cfg.run.data}, "baseline": {"kind": kind, "params": params},
            "data": cfg.tables["data"], "train": {"split_seed": cfg.train.split_seed}}  # fmt: skip
