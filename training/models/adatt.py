"""AdaTT (Li et al., KDD 2023): adaptive task-to-task fusion of task-specific expert units.

Each level holds one expert unit of `n_task_experts` experts per task and, in `adatt-sp`, a shared
unit of `n_shared_experts`. Task k's fusion unit output is
    NativeExpertLF_k + AllExpertGF_k
  = sum_i v[k, i] * E_{k,i}           (learned linear fusion of task k's own experts: the residual)
  + sum_e g_k(x_k)[e] * E_e            (a gate fed by task k's input over ALL experts of the level)
so a task can draw on any other task's experts while its own keep a direct path. In adatt-sp the
shared unit's output is a gate over all experts (no residual); the last level has no shared unit
output. Expert unit k reads task k's previous-level output; the shared unit the shared output.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from training.models.parts import EXPERT_SIZES, BaseConfig, GatedBody
from training.models.ple import gated_level
from training.search_space import Int, Space
from training.settings_types import STRICT, Count, Sizes


@dataclass(frozen=True, config=STRICT)
class AdaTTConfig(BaseConfig):
    n_levels: Count = 2
    n_task_experts: Count = 2
    n_shared_experts: Annotated[int, Field(ge=0)] = 0  # adatt-sp: > 0
    expert_hidden: Sizes = (128, 64)


SEARCH: Space = {"n_levels": Int(1, 3), "n_task_experts": Int(1, 4), "expert_hidden": EXPERT_SIZES}
SP_SEARCH: Space = {**SEARCH, "n_shared_experts": Int(1, 4)}


class AdaTTLevel(nn.Module):
    """(n_slots, B, d) -> (G, B, h) fused outputs, gate weights (G, B, E); G = K (+1 shared)."""

    def __init__(self, d_in: int, n_tasks: int, config: AdaTTConfig, last: bool):
        super().__init__()
        # Task gates see every expert of the level (all tasks' and the shared ones).
        self.level = gated_level(d_in, n_tasks, config.n_task_experts, config.n_shared_experts,
                                 config.expert_hidden, last=last or not config.n_shared_experts,
                                 task_sees_all=True)  # fmt: skip
        m = config.n_task_experts
        self.native = nn.Parameter(torch.full((n_tasks, 1, m), 1.0 / m))  # (K, 1, m) NativeExpertLF
        self.n_tasks, self.m = n_tasks, m
        self.gate_mask = self.level.gate_mask
        self.out_dim = self.level.out_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        expert_out, weights = self.level.experts_and_gates(x)  # (E, B, h), (G, B, E)
        gated = torch.matmul(weights.transpose(0, 1), expert_out.transpose(0, 1)).transpose(0, 1)  # (G, B, h)
        k, m, h = self.n_tasks, self.m, self.out_dim
        own = expert_out[: k * m].reshape(k, m, -1)  # (K, m, B*h): task k's experts are k*m..k*m+m-1
        residual = torch.matmul(self.native, own).reshape(k, -1, h)  # (K, B, h)
        fused_tasks = gated[:k] + residual
        return torch.cat([fused_tasks, gated[k:]], dim=0), weights  # shared output (if any) gate-only


def build_adatt(d_in: int, n_tasks: int, config: AdaTTConfig) -> GatedBody:
    levels = []
    for j in range(config.n_levels):
        levels.append(AdaTTLevel(d_in, n_tasks, config, last=j == config.n_levels - 1))
        d_in = levels[-1].out_dim
    return GatedBody(levels)
