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


def subspace_orthogonality(subspaces: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sluice networks' subspace orthogonality penalty (Ruder et al., AAAI 2019).

    For every layer and task column, the squared Frobenius norm of G_i^T G_j for each pair of its
    subspaces i < j (G: the subspace's (B, w/S) activations), summed. Each product is divided by the
    batch size (a mean over rows, not a sum) so the penalty, and its weight, do not grow with the
    batch, which differs between single-process and torchrun training.
    subspaces: [(K, B, S, d)] per layer -> scalar (0 for none, or for S = 1: nothing to separate).
    """
    terms = []
    for g in subspaces:
        k, b, s, d = g.shape
        flat = g.permute(0, 2, 3, 1).reshape(k, s * d, b)  # (K, S*d, B)
        gram = torch.matmul(flat, flat.transpose(1, 2)) / b  # (K, S*d, S*d); block (i, j) = G_i^T G_j / B
        across = 1.0 - torch.block_diag(*[torch.ones(d, d, device=g.device)] * s)  # 0 on the (i, i) blocks
        terms.append((gram * across).pow(2).sum() / 2)  # each pair twice: blocks (i, j) and (j, i)
    return torch.stack(terms).sum() if terms else torch.zeros(())
