"""The PLE paper's loss design (Sec. 5.3): per-task sample spaces and per-epoch task weights."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from service.modelspec import TaskSpec
from training.models import squashes


def masked_task_losses(
    logits: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, tasks: Sequence[TaskSpec]
) -> torch.Tensor:
    """Each task's loss averaged over the samples inside its own sample space.

    logits (K, B), labels (B, K), masks (B, K) bool -> (K,). A task with no sample in the batch
    contributes 0 (not NaN) and so no gradient.
    """
    per_task = []
    for k, task in enumerate(tasks):
        z, y = logits[k], labels[:, k]
        if task.kind == "binary":
            loss = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        else:
            pred = torch.sigmoid(z) if squashes(task) else z
            loss = (pred - y) ** 2
        m = masks[:, k].to(loss.dtype)
        per_task.append((loss * m).sum() / m.sum().clamp(min=1.0))
    return torch.stack(per_task)


def epoch_task_weights(
    tasks: Sequence[TaskSpec], epoch: int, w0: Mapping[str, float], gamma: Mapping[str, float]
) -> torch.Tensor:
    """w_k(t) = w_k0 * gamma_k ** t for epoch t (0-based); tasks not named get w0 = 1, gamma = 1."""
    return torch.tensor([w0.get(t.name, 1.0) * gamma.get(t.name, 1.0) ** epoch for t in tasks])
