"""How the per-task losses become one training step (`[train] task_balancing`).

- static: sum_k w_k(t) * L_k, the PLE paper's per-epoch weights w_k0 * gamma_k^t (the default).
- uncertainty: Kendall, Gal & Cipolla (CVPR 2018): one learned log-variance s_k per task;
  a regression contributes 0.5 * exp(-s_k) * L_k + 0.5 * s_k, a classification
  exp(-s_k) * L_k + 0.5 * s_k, so a noisy task weighs itself down and cannot shrink s_k for free.
- pcgrad: Yu et al. (NeurIPS 2020): each task's gradient (of w_k(t) * L_k) is taken alone; where
  two conflict (negative dot product) one is projected onto the other's normal plane, in a random
  order per step; the step follows the sum. K backward passes per step.
The w_k(t) weights apply in every mode; 1 unless configured.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from contract.modelspec import TaskSpec

Balancing = Literal["static", "uncertainty", "pcgrad"]


class TaskBalancer(nn.Module):
    """Turns (K,) weighted task losses into gradients on the model's parameters."""

    def __init__(self, mode: Balancing, tasks: Sequence[TaskSpec], generator: torch.Generator | None = None):
        super().__init__()
        self.mode = mode
        self.task_names = [t.name for t in tasks]
        if mode == "uncertainty":
            self.log_var = nn.Parameter(torch.zeros(len(tasks)))  # s_k = log sigma_k^2
            # Kendall et al.: 1 / (2 sigma^2) for a regression, 1 / sigma^2 for a classification.
            scale = [1.0 if t.kind == "binary" else 0.5 for t in tasks]
            self.register_buffer("scale", torch.tensor(scale), persistent=False)
        self.generator = generator or torch.Generator().manual_seed(0)

    def total(self, weighted: torch.Tensor) -> torch.Tensor:
        """The scalar the step minimises, from (K,) weighted task losses (static / uncertainty)."""
        if self.mode == "uncertainty":
            return (self.scale * torch.exp(-self.log_var) * weighted + 0.5 * self.log_var).sum()
        return weighted.sum()

    def backward(self, weighted: torch.Tensor, params: Sequence[nn.Parameter], extra: torch.Tensor | None = None) -> None:
        """Set the gradients of `params` (and of the balancer's own) for one step; `extra` (a
        penalty) adds its plain gradient."""
        if self.mode != "pcgrad":
            loss = self.total(weighted)
            (loss if extra is None else loss + extra).backward()
            return
        grads = [_flat(torch.autograd.grad(loss_k, params, retain_graph=True, allow_unused=True), params)
                 for loss_k in weighted]  # fmt: skip
        combined = project_conflicts(grads, self.generator)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = combined[offset : offset + n].view_as(p).clone()
            offset += n
        if extra is not None:
            extra.backward()

    def describe(self) -> dict[str, float]:
        """What the balancer learned, for the per-epoch history (uncertainty: each s_k)."""
        if self.mode != "uncertainty":
            return {}
        return {f"log_var_{name}": float(v) for name, v in zip(self.task_names, self.log_var.detach())}


def project_conflicts(grads: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """PCGrad: each g_i, projected off every g_j (random order) it conflicts with; then summed."""
    out = []
    for i, g in enumerate(grads):
        g = g.clone()
        for j in torch.randperm(len(grads), generator=generator).tolist():
            if j == i:
                continue
            dot = torch.dot(g, grads[j])
            norm = grads[j].pow(2).sum()
            if dot < 0 and norm > 0:
                g -= dot / norm * grads[j]
        out.append(g)
    return torch.stack(out).sum(0)


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[nn.Parameter]) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])
