"""Training loop: encode with the service's feature transform, masked multi-task loss, evaluate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from service.features import Encoded, FeatureTransform, fit_dense
from service.modelspec import FeatureSpec
from training.data import Dataset
from training.evaluate import predict, task_metrics
from training.losses import epoch_task_weights, masked_task_losses
from training.models import MultiTaskModel, build_model


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 1024
    lr: float = 3e-3
    seed: int = 0
    split_seed: int = 0
    loss_w0: dict[str, float] = field(default_factory=dict)  # w_k0 per task (default 1)
    loss_gamma: dict[str, float] = field(default_factory=dict)  # gamma_k per task (default 1)


@dataclass
class TrainResult:
    model: MultiTaskModel
    features: list[FeatureSpec]  # dense statistics fitted on the training split
    dataset: Dataset
    metrics: dict[str, dict[str, dict[str, float]]]  # split -> task -> metric -> value
    history: list[dict[str, float]]
    seconds: float
    samples_per_second: float


def fit_features(train: Dataset) -> list[FeatureSpec]:
    return [fit_dense(s, train.columns[s.name]) if s.kind == "dense" else s for s in train.features]


def encode(transform: FeatureTransform, data: Dataset) -> Encoded:
    return transform.encode(len(data), per_row=data.columns)


def run_training(
    dataset: Dataset,
    family: str,
    config: TrainConfig = TrainConfig(),
    model_config=None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    torch.manual_seed(config.seed)
    train, val, test = dataset.split(seed=config.split_seed)
    features = fit_features(train)
    transform = FeatureTransform(features)
    enc = {name: encode(transform, part) for name, part in (("train", train), ("val", val), ("test", test))}
    model = build_model(family, dataset.tasks, transform.cardinalities(), len(transform.dense), model_config)
    log(f"{family}: {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{len(train)} train / {len(val)} validation / {len(test)} test rows")  # fmt: skip

    sparse = torch.from_numpy(enc["train"].sparse_ids)
    dense = torch.from_numpy(enc["train"].dense)
    labels = torch.from_numpy(train.labels)
    masks = torch.from_numpy(train.masks)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    history = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        weights = epoch_task_weights(dataset.tasks, epoch, config.loss_w0, config.loss_gamma)
        order = torch.randperm(len(train), generator=generator)
        total, steps = torch.zeros(len(dataset.tasks)), 0
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]
            per_task = masked_task_losses(model.logits(sparse[idx], dense[idx]), labels[idx], masks[idx], dataset.tasks)
            loss = (weights * per_task).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += per_task.detach()
            steps += 1
        val_metrics = task_metrics(predict(model, enc["val"].sparse_ids, enc["val"].dense), val.labels, val.masks, dataset.tasks)
        entry = {"epoch": epoch, **{f"loss_{t.name}": float(total[k] / steps) for k, t in enumerate(dataset.tasks)}}
        history.append(entry)
        summary = " ".join(f"{t}:{m.get('auc', m.get('mse', float('nan'))):.4f}" for t, m in val_metrics.items())
        log(f"epoch {epoch + 1}/{config.epochs}  loss {float((weights * total).sum() / steps):.4f}  val {summary}")
    seconds = time.perf_counter() - start

    metrics = {
        split: task_metrics(predict(model, enc[key].sparse_ids, enc[key].dense), part.labels, part.masks, dataset.tasks)
        for split, key, part in (("validation", "val", val), ("test", "test", test))
    }
    model.eval()
    return TrainResult(
        model=model,
        features=features,
        dataset=dataset,
        metrics=metrics,
        history=history,
        seconds=seconds,
        samples_per_second=config.epochs * len(train) / max(seconds, 1e-9),
    )


def sample_inputs(result: TrainResult, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n encoded rows of the data set (cycled), for export checks and warm-ups."""
    index = np.arange(n) % len(result.dataset)
    enc = FeatureTransform(result.features).encode(n, per_row={k: v[index] for k, v in result.dataset.columns.items()})
    return enc.sparse_ids, enc.dense
