"""The PLE paper's loss design (Sec. 5.3): per-task sample spaces and per-epoch task weights."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from contract.modelspec import TaskSpec
from training.models import squashes


def masked_task_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    tasks: Sequence[TaskSpec],
    denominators: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each task's loss averaged over the samples inside its own sample space.

    logits (K, B), labels (B, K), masks (B, K) bool -> (K,). A task with no sample in the batch
    contributes 0 (not NaN) and so no gradient. Labels outside the sample space are never read (they
    may be NaN). denominators (K,): what each task's masked sum is divided by; default this batch's
    in-space count (at least 1); under torchrun `distributed.loss_denominators`.
    """
    sums = []
    for k, task in enumerate(tasks):
        z, inside = logits[k], masks[:, k]
        y = torch.where(inside, labels[:, k], 0.0)  # NaN * 0 is NaN, in the loss and its gradient
        if task.kind == "binary":
            loss = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        else:
            pred = torch.sigmoid(z) if squashes(task) else z
            loss = (pred - y) ** 2
        sums.append((loss * inside.to(loss.dtype)).sum())
    sums = torch.stack(sums)  # (K,)
    if denominators is None:
        denominators = masks.sum(0).to(sums.dtype).clamp(min=1.0)
    return sums / denominators


def check_task_names(tasks: Sequence[TaskSpec], **weights: Mapping[str, float]) -> None:
    """ValueError when a per-task setting (e.g. loss_gamma={...}) names a task the data set lacks:
    a typo or another data set's task would otherwise be silently ignored."""
    known = [t.name for t in tasks]
    for setting, values in weights.items():
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{setting} names unknown task(s) {unknown}; the data set's tasks are {known}")


def epoch_task_weights(
    tasks: Sequence[TaskSpec], epoch: int, w0: Mapping[str, float], gamma: Mapping[str, float]
) -> torch.Tensor:
    """w_k(t) = w_k0 * gamma_k ** t for epoch t (0-based); tasks not named get w0 = 1, gamma = 1."""
    check_task_names(tasks, loss_w0=w0, loss_gamma=gamma)
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
