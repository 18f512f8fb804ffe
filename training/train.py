"""Training loop: encode with the service's feature transform, masked multi-task loss, evaluate.

Per epoch t every task's loss is weighted by w_k(t) = w_k0 * gamma_k^t (the PLE paper's Sec. 5.3).
After each epoch the validation loss (the masked task losses weighted by w_k0) decides early
stopping; the weights of the best epoch are the ones kept and exported. Runs are seeded: the same
seed, data and thread count give the same model. The loop is fed by an `EpochBatches` source:
the encoded data set in memory (`run_training`) or a Parquet file read chunk by chunk
(`run_parquet_training`). It trains on `device` (auto: CUDA when there is a GPU); per-epoch
validation runs there too, then the kept model goes back to the CPU for the final metrics and the
export. Under torchrun it runs data-parallel (training/distributed.py). About 300 lines: `fit`, the
epoch loop with its device moves, loss weights, early stopping and history, is one function (~120
lines) on purpose, read top to bottom; the helpers around it are what the tests and exporter call.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from contract.features import Encoded, FeatureTransform, fit_dense
from contract.modelspec import FeatureSpec, TaskSpec
from training.balancing import TaskBalancer
from training.config import TrainConfig
from training.data import Dataset
from training.distributed import TrainingStep, data_parallel, distributed_context, loss_denominators, resolve_device
from training.evaluate import gate_utilisation, on_model_device, predict, task_metrics
from training.losses import check_task_names, epoch_task_weights, masked_task_losses, subspace_orthogonality
from training.models import MultiTaskModel, build_model


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite (a learning rate too high, most often)."""


@dataclass
class TrainResult:
    model: MultiTaskModel
    features: list[FeatureSpec]  # dense statistics fitted on the training split
    dataset: Dataset
    metrics: dict[str, dict[str, dict[str, float]]]  # split -> task -> metric -> value
    history: list[dict[str, float]]
    seconds: float
    samples_per_second: float
    gates: dict[str, dict[str, float]] = field(default_factory=dict)  # expert utilisation per gate
    extra_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # e.g. the MTL gain
    best_epoch: int = 0
    best_score: float = float("inf")  # the kept epoch's validation selection score (lower is better)
    rows: dict[str, int] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    split_seed: int | None = None  # in-memory data: the seed of its train/validation/test split


def check_loss_weights(config: TrainConfig, tasks: list[TaskSpec]) -> None:
    """ValueError for a loss weight naming no task of the data: before any row is read or encoded."""
    check_task_names(tasks, loss_w0=config.loss_w0, loss_gamma=config.loss_gamma)


def fit_features(train: Dataset, config: TrainConfig = TrainConfig()) -> list[FeatureSpec]:
    """The feature schema with the numbers' statistics fitted on the training split."""
    return [fit_dense(s, train.columns[s.name], config.numeric_encoding, config.numeric_bins) if s.kind == "dense" else s
            for s in train.features]  # fmt: skip


def encode(transform: FeatureTransform, data: Dataset) -> Encoded:
    return transform.encode(len(data), per_row=data.columns)


@torch.no_grad()
def validation_losses(model: MultiTaskModel, enc: Encoded, data: Dataset, batch: int = 8192) -> torch.Tensor:
    """(K,) each task's masked loss over a whole split (the mean over its sample space)."""
    model.eval()
    sums, counts = torch.zeros(len(data.tasks)), torch.zeros(len(data.tasks))
    for i in range(0, len(data), batch):
        sl = slice(i, i + batch)
        rows = (enc.sparse_ids[sl], enc.dense[sl], data.labels[sl], data.masks[sl])
        sparse, dense, labels, masks = on_model_device(model, *rows)
        per_task = masked_task_losses(model.logits(sparse, dense), labels, masks, data.tasks).cpu()
        n = masks.sum(0).float().cpu()
        sums += per_task * n
        counts += n
    return sums / counts.clamp(min=1.0)


def base_rate_losses(data: Dataset) -> torch.Tensor:
    """(K,) each task's loss when always predicting its base rate on `data`: the entropy of a binary
    label, the variance of a regression (at least 1e-6, so a task without spread cannot divide by 0)."""
    out = []
    for k, task in enumerate(data.tasks):
        y = data.labels[data.masks[:, k], k].astype(np.float64)
        if len(y) == 0:
            out.append(1.0)
        elif task.kind == "binary":
            p = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
            out.append(-(p * math.log(p) + (1 - p) * math.log(1 - p)))
        else:
            out.append(float(y.var()))
    return torch.tensor(out).clamp(min=1e-6)


def selection_score(losses: torch.Tensor, w0: torch.Tensor, base: torch.Tensor, selection: str) -> float:
    """Lower is better: the validation number early stopping and model selection follow."""
    return float((w0 * (losses / base if selection == "normalized_loss" else losses)).sum())


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # sparse (b, S), dense (b, D), labels, masks (b, K)
EpochHook = Callable[[int, dict], None]  # (epoch, its row of the history) after each epoch
EpochBatches = Callable[[int, torch.Generator], Iterator[Batch]]  # (epoch, generator) -> this process's batches


def in_memory_batches(enc: Encoded, data: Dataset, batch_size: int, rank: int = 0, world: int = 1) -> EpochBatches:
    """A fresh seeded permutation per epoch; under torchrun each process takes its share of a step."""
    sparse, dense = torch.from_numpy(enc.sparse_ids), torch.from_numpy(enc.dense)
    labels, masks = torch.from_numpy(data.labels), torch.from_numpy(data.masks)

    def batches(epoch: int, generator: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(len(data), generator=generator)
        global_batch = batch_size * world
        for i in range(0, len(order) - world + 1, global_batch):  # every process gets >= 1 row per step
            idx = torch.tensor_split(order[i : i + global_batch], world)[rank]
            yield sparse[idx], dense[idx], labels[idx], masks[idx]

    return batches


def run_training(
    dataset: Dataset,
    family: str,
    config: TrainConfig = TrainConfig(),
    model_config=None,
    log: Callable[[str], None] = print,
    on_epoch: EpochHook | None = None,
) -> TrainResult:
    """Split, fit the dense statistics on the training split, encode, train, evaluate."""
    check_loss_weights(config, dataset.tasks)
    torch.manual_seed(config.seed)
    split_seed = config.split_seed if config.split_seed is not None else (dataset.seed or 0)
    train, val, test = dataset.split(seed=split_seed)
    features = fit_features(train, config)
    transform = FeatureTransform(features)
    enc_train = encode(transform, train)
    rank, world = distributed_context(resolve_device(config.device))
    log(f"{family}: {len(train)} train / {len(val)} validation / {len(test)} test rows (split seed {split_seed})")
    result = fit(dataset, family, features, in_memory_batches(enc_train, train, config.batch_size, rank, world),
                 val, test, len(train), config, model_config, log, on_epoch)  # fmt: skip
    return dataclasses.replace(result, split_seed=split_seed)


def run_parquet_training(
    path,
    family: str,
    config: TrainConfig = TrainConfig(),
    model_config=None,
    log: Callable[[str], None] = print,
    chunk_rows: int = 65_536,
    max_eval_rows: int = 200_000,
    on_epoch: EpochHook | None = None,
) -> TrainResult:
    """Train from a Parquet file in the layout of training/data/stream.py, one chunk in memory at a time."""
    from training.data.stream import ParquetStream

    split_seed = config.split_seed if config.split_seed is not None else 0
    stream = ParquetStream(path, chunk_rows, split_seed, max_eval_rows)
    check_loss_weights(config, stream.tasks)  # the tasks come from the file's metadata: no pass yet
    features, val, test, n_train = stream.prepare(config.numeric_encoding, config.numeric_bins)
    transform = FeatureTransform(features)
    rank, world = distributed_context(resolve_device(config.device))
    log(f"{family}: streaming {stream.n_rows} rows from {path} in chunks of {chunk_rows}: {n_train} train / "
        f"{len(val)} validation / {len(test)} test rows held out (split seed {split_seed})")  # fmt: skip

    def batches(epoch: int, generator: torch.Generator) -> Iterator[Batch]:
        for split, chunk in stream.chunks():
            train = chunk.subset(np.flatnonzero(split == 0))
            if len(train) >= world:
                yield from in_memory_batches(encode(transform, train), train, config.batch_size, rank, world)(epoch, generator)

    descriptor = dataclasses.replace(val, description=f"{val.description} (streamed from {Path(path).name})",
                                     fingerprint=stream.sha256(), source_rows=stream.n_rows)  # fmt: skip
    return fit(descriptor, family, features, batches, val, test, n_train, config, model_config, log, on_epoch)


def fit(
    dataset: Dataset,
    family: str,
    features: list[FeatureSpec],
    epoch_batches: EpochBatches,
    val: Dataset,
    test: Dataset,
    n_train: int,
    config: TrainConfig,
    model_config=None,
    log: Callable[[str], None] = print,
    on_epoch: EpochHook | None = None,
) -> TrainResult:
    """The training loop proper, whatever feeds it (memory or a Parquet stream)."""
    torch.manual_seed(config.seed)
    transform = FeatureTransform(features)
    enc = {"val": encode(transform, val), "test": encode(transform, test)}
    device = resolve_device(config.device)
    model = build_model(family, dataset.tasks, transform.cardinalities(), transform.n_dense, model_config).to(device)
    rank, world = distributed_context(device)
    step_model: nn.Module = TrainingStep(model)
    if torch.distributed.is_initialized():  # torchrun, one process or several
        if config.task_balancing == "pcgrad":  # its per-task gradients would bypass DDP's all-reduce
            raise ValueError("train.task_balancing = 'pcgrad' runs in one process only (not under torchrun)")
        step_model = data_parallel(step_model, device)
        log(f"rank {rank}/{world}: data-parallel, {config.batch_size} rows per process and step")
    log(f"{family}: {sum(p.numel() for p in model.parameters()):,} parameters, training on {device}")

    generator = torch.Generator().manual_seed(config.seed)
    balancer = TaskBalancer(config.task_balancing, dataset.tasks, torch.Generator().manual_seed(config.seed)).to(device)
    params = list(model.parameters())
    # AdamW: weight decay decoupled from the adaptive step (with weight_decay = 0 it is Adam).
    optimizer = torch.optim.AdamW([*params, *balancer.parameters()], lr=config.lr, weight_decay=config.weight_decay)
    w0 = epoch_task_weights(dataset.tasks, 0, config.loss_w0, {})
    base = base_rate_losses(val)
    penalty_weight = model.penalty_weight()  # sluice's subspace orthogonality; 0 for other families
    # An exponential moving average of the weights (updated after every step) is what is judged and kept.
    # Buffers are constants here (offsets, masks, -inf gate biases): copied, never averaged.
    averaged = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=False)
                if config.ema_decay else None)  # fmt: skip
    history: list[dict[str, float]] = []
    best = (float("inf"), -1, None)  # selection score, epoch, weights
    start = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        weights = epoch_task_weights(dataset.tasks, epoch, config.loss_w0, config.loss_gamma).to(device)
        total, penalty_total, steps = torch.zeros(len(dataset.tasks), device=device), torch.zeros((), device=device), 0
        bar = tqdm(epoch_batches(epoch, generator), desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                   file=sys.stderr, leave=False,
                   disable=rank > 0 or (None if config.progress is None else not config.progress))  # fmt: skip
        for batch in bar:
            sparse, dense, labels, masks = (t.to(device, non_blocking=True) for t in batch)
            if not config.sample_space_loss:  # every row counts; outside its space a label is 0, not NaN
                labels, masks = torch.where(masks, labels, 0.0), torch.ones_like(masks)
            logits, subspaces = step_model(sparse, dense)
            # (K,); under torchrun this process's share of the global batch's masked mean, times world
            per_task = masked_task_losses(logits, labels, masks, dataset.tasks, loss_denominators(masks, world))
            penalty = penalty_weight * subspace_orthogonality(subspaces) if penalty_weight else None
            value = float(balancer.total(weights * per_task).detach()) + (float(penalty) if penalty is not None else 0.0)
            if not math.isfinite(value):  # (under torchrun, the other processes are stopped with this one)
                raise TrainingDiverged(f"training diverged: the loss is {value} at epoch {epoch + 1}, step "
                                       f"{steps + 1}; lower the learning rate (now {config.lr})")  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            balancer.backward(weights * per_task, params, penalty)
            optimizer.step()
            if averaged is not None:
                averaged.update_parameters(model)
            if penalty is not None:
                penalty_total += penalty.detach()
            total += per_task.detach()
            steps += 1
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        steps = max(steps, 1)
        judged = averaged.module if averaged is not None else model  # the weights that would be kept
        val_losses = validation_losses(judged, enc["val"], val)
        val_loss = float((w0 * val_losses).sum())
        score = selection_score(val_losses, w0, base, config.selection)
        val_metrics = task_metrics(predict(judged, enc["val"].sparse_ids, enc["val"].dense), val.labels, val.masks, dataset.tasks)
        history.append({"epoch": epoch, "val_loss": val_loss, "val_score": score,
                        "val_normalized_loss": float((val_losses / base).mean()), **balancer.describe(),
                        **{f"val_loss_{t.name}": float(val_losses[k]) for k, t in enumerate(dataset.tasks)},
                        **{f"w_{t.name}": float(weights[k]) for k, t in enumerate(dataset.tasks)},
                        **{f"loss_{t.name}": float(total[k] / steps) for k, t in enumerate(dataset.tasks)},
                        **({"loss_orthogonality": float(penalty_total / steps)} if penalty_weight else {}),
                        **{f"val_{t}_{m}": v for t, ms in val_metrics.items() for m, v in ms.items() if m in ("auc", "mse")}})  # fmt: skip
        summary = " ".join(f"{t}:{m.get('auc', m.get('mse', float('nan'))):.4f}" for t, m in val_metrics.items())
        log(f"epoch {epoch + 1}/{config.epochs}  loss {float(((weights * total).sum() + penalty_total) / steps):.4f}  "
            f"val loss {val_loss:.4f}  val {summary}")  # fmt: skip
        if on_epoch is not None:
            on_epoch(epoch, history[-1])  # may stop the run (a tuner pruning a poor trial)
        if score < best[0]:
            best = (score, epoch, {k: v.detach().clone() for k, v in judged.state_dict().items()})
        elif config.patience and epoch - best[1] >= config.patience:
            log(f"early stop: no better validation {config.selection} for {config.patience} epoch(s); "
                f"keeping epoch {best[1] + 1}")  # fmt: skip
            break
    seconds = time.perf_counter() - start
    model.cpu()  # final metrics and the export run on the CPU, as the service's does
    if best[2] is not None:
        model.load_state_dict(best[2])
    model.eval()

    metrics = {
        split: task_metrics(predict(model, enc[key].sparse_ids, enc[key].dense), part.labels, part.masks, dataset.tasks)
        for split, key, part in (("validation", "val", val), ("test", "test", test))
    }
    return TrainResult(
        model=model,
        features=features,
        dataset=dataset,
        metrics=metrics,
        history=history,
        seconds=seconds,
        samples_per_second=len(history) * n_train / max(seconds, 1e-9),
        gates=gate_utilisation(model, enc["val"].sparse_ids, enc["val"].dense),
        best_epoch=best[1],
        best_score=best[0],
        rows={"train": n_train, "validation": len(val), "test": len(test)},
        rank=rank,
        world_size=world,
    )


def sample_inputs(result: TrainResult, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n encoded rows of the data set (cycled), for export checks and warm-ups."""
    index = np.arange(n) % len(result.dataset)
    enc = FeatureTransform(result.features).encode(n, per_row={k: v[index] for k, v in result.dataset.columns.items()})
    return enc.sparse_ids, enc.dense
