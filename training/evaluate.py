"""Per-task evaluation inside each task's sample space: AUC and log loss for binary, MSE otherwise."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score

from contract.modelspec import TaskSpec


def on_model_device(model: torch.nn.Module, *arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Arrays as tensors where the model's weights are (the CPU, or the GPU while it trains there)."""
    device = next(model.parameters()).device
    return tuple(torch.from_numpy(a).to(device) for a in arrays)


@torch.no_grad()
def predict(model: torch.nn.Module, sparse: np.ndarray, dense: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Model outputs (probabilities / values) as (N, K)."""
    model.eval()
    parts = []
    for i in range(0, len(sparse), batch):
        out = model(*on_model_device(model, sparse[i : i + batch], dense[i : i + batch]))
        parts.append(torch.stack(out[: len(model.tasks)], dim=1).cpu().numpy())  # gate outputs, if any, follow
    return np.concatenate(parts)


def task_metrics(
    pred: np.ndarray, labels: np.ndarray, masks: np.ndarray, tasks: Sequence[TaskSpec]
) -> dict[str, dict[str, float]]:
    metrics: dict[str, dict[str, float]] = {}
    for k, task in enumerate(tasks):
        m = masks[:, k]
        y, p = labels[m, k], pred[m, k]
        entry = {"samples": float(m.sum())}
        if task.kind == "binary":
            if 0 < y.sum() < len(y):
                entry["auc"] = float(roc_auc_score(y, p))
                entry["logloss"] = float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))
            entry["positive_rate"] = float(y.mean()) if len(y) else 0.0
        elif len(y):
            entry["mse"] = float(np.mean((p - y) ** 2))
        metrics[task.name] = entry
    return metrics


def format_metrics(metrics: dict[str, dict[str, float]]) -> str:
    rows = []
    for task, m in metrics.items():
        shown = ", ".join(f"{k}={v:.4f}" for k, v in m.items() if k in ("auc", "mse", "logloss"))
        rows.append(f"  {task:<6} {shown or 'n/a'}  (n={int(m['samples'])})")
    return "\n".join(rows)


@torch.no_grad()
def gate_utilisation(model, sparse: np.ndarray, dense: np.ndarray, batch: int = 8192) -> dict[str, dict[str, float]]:
    """Mean and std over the rows of each gate's weight on each expert it may use.

    Keys "gates.level<j>.<gate>" where gate is a task's name, 'shared' or 'all' (OMoE); values
    {"expert<e>.mean", "expert<e>.std"}. A gate that puts ~all weight on one expert (a collapsed
    gate) shows here. Empty for ungated families.
    """
    model.eval()
    shapes = model.gate_shapes()
    if not shapes or len(sparse) == 0:
        return {}
    parts: list[list[torch.Tensor]] = [[] for _ in shapes]
    for i in range(0, len(sparse), batch):
        _, gates = model.encode(torch.from_numpy(sparse[i : i + batch]), torch.from_numpy(dense[i : i + batch]))
        for j, g in enumerate(gates):
            parts[j].append(g)  # (G, b, E)
    out: dict[str, dict[str, float]] = {}
    for j, level_parts in enumerate(parts):
        weights = torch.cat(level_parts, dim=1)  # (G, N, E)
        mask = model.levels[j].gate_mask
        mean, std = weights.mean(dim=1), weights.std(dim=1, correction=0)  # (G, E)
        for g, label in enumerate(model.gate_labels(j)):
            key = f"gates.level{j}.{label}" if label != "all" else f"gates.level{j}.all{g}"
            out[key] = {stat: float(v[g, e]) for e in range(mask.shape[1]) if mask[g, e]
                        for stat, v in ((f"expert{e}.mean", mean), (f"expert{e}.std", std))}  # fmt: skip
    return out


def mtl_gain(mtl: dict[str, dict[str, float]], single: dict[str, dict[str, float]]) -> dict[str, float]:
    """The PLE paper's Eq. 11 per task: M_MTL - M_single-task for AUC, M_single - M_MTL for MSE.

    Positive means the multi-task model beats the single-task baseline on that task.
    """
    gain = {}
    for task, m in mtl.items():
        base = single.get(task, {})
        if "auc" in m and "auc" in base:
            gain[task] = m["auc"] - base["auc"]
        elif "mse" in m and "mse" in base:
            gain[task] = base["mse"] - m["mse"]
    return gain
