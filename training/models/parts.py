"""Building blocks shared by every multi-task family.

Experts, gates and towers are *stacked*: the n members of a group hold one weight tensor
(n, d_in, d_out) and run as one batched MatMul over the member axis. That exports to a handful of
ONNX nodes instead of one chain per expert, which the project's measurements (docs/performance.md)
found 1.3-2.8x faster on ONNX Runtime's CPU provider and ~4x faster on CUDA. Shapes are written beside the code:
B = batch, E = experts, G = gates, K = tasks, C = embedding copies.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from pydantic.dataclasses import dataclass
from torch import nn

# Hyper-parameters are checked when a config is made (from code, a TOML file or --set).
from training.search_space import Choice, Float, Space
from training.settings_types import STRICT, Count, Rate


@dataclass(frozen=True, config=STRICT)
class BaseConfig:
    """Hyper-parameters every family has; each family's config adds its own."""

    embedding_dim: Count = 8
    tower_hidden: tuple[Count, ...] = (32,)  # may be empty: a tower of one linear layer
    gate_outputs: bool = False  # export each gated level's weights as an extra ONNX output
    # Dropout after every hidden activation of the body's MLPs (experts, bottoms, columns) and of
    # the towers; training only (the exported graph, in eval mode, has none).
    dropout: Rate = 0.0
    tower_dropout: Rate = 0.0


# What ranker-tune searches for every family (each family adds its own sizes and counts).
BASE_SEARCH: Space = {
    "embedding_dim": Choice((4, 8, 16)),
    "tower_hidden": Choice(((), (16,), (32,), (64,))),
    "dropout": Float(0.0, 0.4),
    "tower_dropout": Float(0.0, 0.4),
}
EXPERT_SIZES = Choice(((32,), (64,), (128,), (64, 32), (128, 64), (256, 128)))  # experts, bottoms, columns


class FeatureEmbedding(nn.Module):
    """(B, S) per-feature ids and (B, D) dense values -> (C, B, S * dim + D).

    One table holds every sparse feature's rows (offset per feature), so lookup is one Gather.
    `copies` > 1 gives C independent tables (single-task: no parameter shared between tasks).
    """

    def __init__(self, cardinalities: Sequence[int], dim: int, n_dense: int, copies: int = 1):
        super().__init__()
        total = int(sum(cardinalities))
        starts = [0, *cardinalities][: len(cardinalities)]
        per_feature = torch.tensor(starts, dtype=torch.int64).cumsum(0)  # (S,)
        offsets = per_feature + total * torch.arange(copies).unsqueeze(1)  # (C, S)
        self.register_buffer("offsets", offsets.unsqueeze(1), persistent=False)  # (C, 1, S)
        self.table = nn.Embedding(max(copies * total, 1), dim)
        nn.init.normal_(self.table.weight, std=0.05)
        self.copies = copies
        self.out_dim = len(cardinalities) * dim + n_dense

    def forward(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        emb = self.table(sparse_ids.unsqueeze(0) + self.offsets)  # (C, B, S, dim)
        dense = dense.unsqueeze(0).expand(self.copies, -1, -1)  # (C, B, D)
        return torch.cat([emb.flatten(2), dense], dim=2)  # (C, B, S*dim + D)


class StackedMLP(nn.Module):
    """n independent MLPs run as batched MatMuls: (n or 1, B, d_in) -> (n, B, sizes[-1]).

    An input with a leading 1 is broadcast to all n members (every expert reads the same x).
    """

    def __init__(self, n: int, d_in: int, sizes: Sequence[int], final_activation: bool = True):
        super().__init__()
        self.n = n
        self.final_activation = final_activation
        self.dropout = 0.0  # after each activation, in training; set by the model (MultiTaskModel)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_out in sizes:
            bound = 1.0 / math.sqrt(d_in)  # nn.Linear's default initialisation, per member
            self.weights.append(nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, d_out).uniform_(-bound, bound)))
            d_in = d_out
        self.out_dim = d_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.matmul(x, w) + b  # (n, B, d_out)
            if i < last or self.final_activation:
                x = torch.relu(x)
                if self.dropout:
                    x = F.dropout(x, self.dropout, self.training)
        return x


def mix_members(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """out[i] = sum_j matrix[i, j] * x[j]: (M, N) and (N, B, d) -> (M, B, d), as one MatMul."""
    return torch.matmul(matrix, x.transpose(0, 1)).transpose(0, 1)  # (B, M, d) -> (M, B, d)


class ExtractionLevel(nn.Module):
    """One level of gated experts: the common core of MMoE, OMoE, CGC, PLE, ML-MMoE and AdaTT.

    The level reads `n_slots` input representations (B, d) stacked as (n_slots, B, d); a level fed
    by one representation (the embedding) broadcasts it. Each expert reads one slot
    (`expert_slot[e]`); each gate reads one slot (`gate_slot[g]`) and mixes only the experts that
    `gate_mask[g]` selects, via a softmax whose other logits are -inf (exactly zero weight).

    forward: (n_slots, B, d) -> outputs (G, B, h), gate weights (G, B, E)
    """

    def __init__(
        self,
        d_in: int,
        expert_sizes: Sequence[int],
        expert_slot: Sequence[int],
        gate_slot: Sequence[int],
        gate_mask: Sequence[Sequence[bool]],
    ):
        super().__init__()
        n_experts, n_gates = len(expert_slot), len(gate_slot)
        mask = torch.tensor(gate_mask, dtype=torch.bool)
        if mask.shape != (n_gates, n_experts) or not mask.any(dim=1).all():
            raise ValueError("gate_mask must be (gates, experts) with at least one expert per gate")
        self.experts = StackedMLP(n_experts, d_in, expert_sizes)
        self.gates = StackedMLP(n_gates, d_in, [n_experts], final_activation=False)
        self.register_buffer("expert_slot", torch.tensor(expert_slot, dtype=torch.int64), persistent=False)
        self.register_buffer("gate_slot", torch.tensor(gate_slot, dtype=torch.int64), persistent=False)
        # Added to the gate logits: 0 where a gate may use an expert, -inf where it may not.
        bias = torch.zeros(n_gates, 1, n_experts).masked_fill(~mask.unsqueeze(1), float("-inf"))
        self.register_buffer("gate_bias", bias, persistent=False)
        self.gate_mask = mask
        self.out_dim = self.experts.out_dim

    def _route(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        # A single input slot broadcasts in the MatMul; otherwise pick each member's slot.
        return x if x.shape[0] == 1 else torch.index_select(x, 0, slots)

    def experts_and_gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n_slots, B, d) -> expert outputs (E, B, h), gate weights (G, B, E)."""
        expert_out = self.experts(self._route(x, self.expert_slot))  # (E, B, h)
        logits = self.gates(self._route(x, self.gate_slot)) + self.gate_bias  # (G, B, E)
        return expert_out, torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        expert_out, weights = self.experts_and_gates(x)
        mixed = torch.matmul(weights.transpose(0, 1), expert_out.transpose(0, 1))  # (B, G, h)
        return mixed.transpose(0, 1), weights  # (G, B, h), (G, B, E)


class Body(nn.Module):
    """The interface of every family's body, the part between the embedding and the towers.

    forward: (C, B, d) embedded input -> (K or 1, B, out_dim) tower inputs, and a list with each
    gated level's weights (G, B, E) (empty for ungated families). The defaults below fit most
    families; a body overrides what it has: `embedding_copies` (single-task: C own tables),
    `gated_levels` / `gate_shapes` (gated families), `with_subspaces` (sluice's training penalty).
    A base class rather than a typing.Protocol, so that these defaults live in one place.
    """

    out_dim: int
    embedding_copies: int = 1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError

    def gated_levels(self) -> Sequence[nn.Module]:
        """The levels whose gates export as `gates_<j>` (each has a (G, E) `gate_mask`)."""
        return ()

    def gate_shapes(self) -> list[tuple[int, int]]:
        """(gates, experts) per gated level, for the extra ONNX outputs."""
        return [tuple(level.gate_mask.shape) for level in self.gated_levels()]

    def with_subspaces(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tower inputs and what a training penalty reads (sluice's subspaces); none by default."""
        return self(x)[0], []


class GatedBody(Body):
    """Extraction levels in a chain: level j's G outputs are level j+1's input slots.

    forward: (1, B, d) -> (G_last, B, h) for the towers, and each level's gate weights (G, B, E).
    """

    def __init__(self, levels: Sequence[nn.Module]):
        super().__init__()
        self.levels = nn.ModuleList(levels)
        self.out_dim = levels[-1].out_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        gates = []
        for level in self.levels:
            x, weights = level(x)
            gates.append(weights)
        return x, gates

    def gated_levels(self) -> Sequence[nn.Module]:
        return self.levels


class Towers(nn.Module):
    """One tower per task, stacked: (K or 1, B, h) -> logits (K, B)."""

    def __init__(self, n_tasks: int, d_in: int, hidden: Sequence[int]):
        super().__init__()
        self.mlp = StackedMLP(n_tasks, d_in, [*hidden, 1], final_activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(-1)  # (K, B)
