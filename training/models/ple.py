"""PLE (Progressive Layered Extraction, Tang et al., RecSys 2020); one level is CGC.

Level j holds, per task k, `n_task_experts` experts and `n_shared_experts` shared experts.
Task k's gate mixes task k's experts and the shared experts and is fed by task k's output of
level j-1; the shared gate mixes every expert and is fed by the shared output of level j-1.
Level 1 is fed by the embedding. The last level has no shared gate: its K outputs feed the towers.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from training.models.parts import ExtractionLevel


@dataclass(frozen=True)
class PLEConfig:
    n_levels: int = 2
    n_task_experts: int = 2
    n_shared_experts: int = 2
    expert_hidden: tuple[int, ...] = (128, 64)
    tower_hidden: tuple[int, ...] = (32,)
    embedding_dim: int = 8


def ple_level(d_in: int, n_tasks: int, config: PLEConfig, last: bool) -> ExtractionLevel:
    """One extraction level. Input slots: 0..K-1 = tasks, K = shared (one slot at level 1)."""
    m, s = config.n_task_experts, config.n_shared_experts
    expert_slot = [k for k in range(n_tasks) for _ in range(m)] + [n_tasks] * s
    n_experts = len(expert_slot)
    shared = [e >= n_tasks * m for e in range(n_experts)]
    gate_mask = [[shared[e] or expert_slot[e] == k for e in range(n_experts)] for k in range(n_tasks)]
    gate_slot = list(range(n_tasks))
    if not last:
        gate_mask.append([True] * n_experts)
        gate_slot.append(n_tasks)
    return ExtractionLevel(d_in, config.expert_hidden, expert_slot, gate_slot, gate_mask)


def build_ple_body(d_in: int, n_tasks: int, config: PLEConfig) -> nn.ModuleList:
    levels = []
    for j in range(config.n_levels):
        level = ple_level(d_in, n_tasks, config, last=j == config.n_levels - 1)
        levels.append(level)
        d_in = level.out_dim
    return nn.ModuleList(levels)
