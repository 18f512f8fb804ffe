"""Per-task evaluation inside each task's sample space: AUC and log loss for binary, MSE otherwise."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score

from service.modelspec import TaskSpec


@torch.no_grad()
def predict(model: torch.nn.Module, sparse: np.ndarray, dense: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Model outputs (probabilities / values) as (N, K)."""
    model.eval()
    parts = []
    for i in range(0, len(sparse), batch):
        out = model(torch.from_numpy(sparse[i : i + batch]), torch.from_numpy(dense[i : i + batch]))
        parts.append(torch.stack(out, dim=1).numpy())
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
