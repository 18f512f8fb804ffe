"""Cross-stitch networks (Misra et al., CVPR 2016) and sluice networks (Ruder et al., AAAI 2019).

Both keep one column (MLP) per task and let the columns exchange information between layers
through learned linear mixing, not input-dependent gates:
- cross-stitch: after each layer, column k becomes sum_j alpha[k, j] * column j, with alpha a
  learned (K, K) matrix per layer, initialised to 0.9 on the diagonal (mostly task-specific).
- sluice: each column's layer output is split into `n_subspaces` subspaces, and the alpha of each
  layer mixes all K * n_subspaces of them; a learned beta (K, L) then mixes each column's L layer
  outputs into its tower input ("layer mixing"). Sluice layers share one width so beta can mix them.
  The paper's subspace orthogonality penalty is a training loss (training/losses.py): the body
  hands each layer's subspaces to the trainer (`with_subspaces`), so the exported graph has none.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from training.models.parts import EXPERT_SIZES, BaseConfig, Body, StackedMLP, mix_members
from training.search_space import Choice, Float, Int, Space
from training.settings_types import STRICT, Count, Sizes


@dataclass(frozen=True, config=STRICT)
class CrossStitchConfig(BaseConfig):
    hidden: Sizes = (128, 64)


@dataclass(frozen=True, config=STRICT)
class SluiceConfig(BaseConfig):
    n_layers: Count = 2
    width: Count = 64
    n_subspaces: Count = 2
    # Weight of the subspace orthogonality penalty in the training loss (0: off). The authors'
    # code leaves it off by default; 0.01 keeps it small beside the task losses (all O(1)).
    orthogonality_weight: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.01


CROSS_STITCH_SEARCH: Space = {"hidden": EXPERT_SIZES}
SLUICE_SEARCH: Space = {"n_layers": Int(1, 3), "width": Choice((32, 64, 128)), "n_subspaces": Choice((1, 2, 4)),
                        "orthogonality_weight": Float(1e-4, 0.1, log=True)}  # fmt: skip


def stitch_init(n: int, self_weight: float = 0.9) -> torch.Tensor:
    """(n, n) with self_weight on the diagonal and the rest spread evenly over each row."""
    if n == 1:
        return torch.ones(1, 1)
    off = (1.0 - self_weight) / (n - 1)
    return torch.full((n, n), off) + (self_weight - off) * torch.eye(n)


class CrossStitch(Body):
    """(1, B, d) -> (K, B, hidden[-1])."""

    def __init__(self, d_in: int, n_tasks: int, config: CrossStitchConfig):
        super().__init__()
        self.layers = nn.ModuleList()
        self.alphas = nn.ParameterList()
        for h in config.hidden:
            self.layers.append(StackedMLP(n_tasks, d_in, [h]))
            self.alphas.append(nn.Parameter(stitch_init(n_tasks)))  # (K, K)
            d_in = h
        self.out_dim = d_in

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        for layer, alpha in zip(self.layers, self.alphas):
            x = mix_members(alpha, layer(x))  # (K, B, h)
        return x, []


class Sluice(Body):
    """(1, B, d) -> (K, B, width)."""

    def __init__(self, d_in: int, n_tasks: int, config: SluiceConfig):
        super().__init__()
        if config.width % config.n_subspaces:
            raise ValueError("sluice width must be a multiple of n_subspaces")
        self.n_tasks, self.width, self.n_sub = n_tasks, config.width, config.n_subspaces
        self.layers = nn.ModuleList()
        self.alphas = nn.ParameterList()
        for _ in range(config.n_layers):
            self.layers.append(StackedMLP(n_tasks, d_in, [config.width]))
            self.alphas.append(nn.Parameter(stitch_init(n_tasks * config.n_subspaces)))  # (K*S, K*S)
            d_in = config.width
        self.beta = nn.Parameter(torch.full((n_tasks, 1, config.n_layers), 1.0 / config.n_layers))  # (K, 1, L)
        self.out_dim = config.width

    def _mix_subspaces(self, h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        k, s, w = self.n_tasks, self.n_sub, self.width
        sub = h.transpose(0, 1).reshape(-1, k * s, w // s)  # (B, K*S, w/S): task-major subspaces
        mixed = torch.matmul(alpha, sub)  # (B, K*S, w/S)
        return mixed.reshape(-1, k, w).transpose(0, 1)  # (K, B, w)

    def with_subspaces(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(1, B, d) -> tower input (K, B, w) and each layer's output before the alpha mixing,
        split into its subspaces (K, B, S, w/S): what the orthogonality penalty reads."""
        outputs, subspaces = [], []
        for layer, alpha in zip(self.layers, self.alphas):
            h = layer(x)  # (K, B, w)
            subspaces.append(h.unflatten(2, (self.n_sub, -1)))  # (K, B, S, w/S)
            x = self._mix_subspaces(h, alpha)  # (K, B, w)
            outputs.append(x)
        stacked = torch.stack(outputs, dim=1).reshape(self.n_tasks, len(outputs), -1)  # (K, L, B*w)
        mixed = torch.matmul(self.beta, stacked)  # (K, 1, B*w)
        return mixed.reshape(self.n_tasks, -1, self.width), subspaces  # (K, B, w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.with_subspaces(x)[0], []


def build_cross_stitch(d_in: int, n_tasks: int, config: CrossStitchConfig) -> CrossStitch:
    return CrossStitch(d_in, n_tasks, config)


def build_sluice(d_in: int, n_tasks: int, config: SluiceConfig) -> Sluice:
    return Sluice(d_in, n_tasks, config)
