"""PLE (Progressive Layered Extraction, Tang et al., RecSys 2020); one level is CGC; ML-MMoE.

Level j holds, per task k, `n_task_experts` experts and `n_shared_experts` shared experts.
Task k's gate mixes task k's experts and the shared experts and is fed by task k's output of
level j-1; the shared gate mixes every expert and is fed by the shared output of level j-1.
Level 1 is fed by the embedding. The last level has no shared gate: its K outputs feed the towers.

ML-MMoE (the PLE paper's stacked MMoE baseline) is the same chain with no task-specific experts:
every expert is shared, fed by the previous level's shared mixture, and every task gate sees all.
"""

from __future__ import annotations

from typing import Annotated, Sequence

from pydantic import Field
from pydantic.dataclasses import dataclass

from training.models.parts import EXPERT_SIZES, BaseConfig, ExtractionLevel, GatedBody
from training.search_space import Int, Space
from training.settings_types import STRICT, Count, Sizes


@dataclass(frozen=True, config=STRICT)
class PLEConfig(BaseConfig):
    n_levels: Count = 2
    n_task_experts: Count = 2
    n_shared_experts: Annotated[int, Field(ge=0)] = 2
    expert_hidden: Sizes = (128, 64)


@dataclass(frozen=True, config=STRICT)
class MLMMoEConfig(BaseConfig):
    n_levels: Count = 2
    n_experts: Count = 4
    expert_hidden: Sizes = (128, 64)


CGC_SEARCH: Space = {"n_task_experts": Int(1, 4), "n_shared_experts": Int(1, 4), "expert_hidden": EXPERT_SIZES}
PLE_SEARCH: Space = {"n_levels": Int(1, 3), **CGC_SEARCH}
ML_MMOE_SEARCH: Space = {"n_levels": Int(1, 3), "n_experts": Int(2, 8), "expert_hidden": EXPERT_SIZES}


def gated_level(d_in: int, n_tasks: int, n_task: int, n_shared: int, hidden: Sequence[int], last: bool,
                task_sees_all: bool = False) -> ExtractionLevel:  # fmt: skip
    """Input slots: 0..K-1 = tasks, K = shared (one slot at level 1, broadcast).

    Experts: n_task per task (reading that task's slot), then n_shared (reading the shared slot).
    Task gate k sees its own and the shared experts (or all, `task_sees_all`); the shared gate,
    present unless `last`, sees all.
    """
    expert_slot = [k for k in range(n_tasks) for _ in range(n_task)] + [n_tasks] * n_shared
    n_experts = len(expert_slot)
    shared = [e >= n_tasks * n_task for e in range(n_experts)]
    gate_mask = [[task_sees_all or shared[e] or expert_slot[e] == k for e in range(n_experts)] for k in range(n_tasks)]
    gate_slot = list(range(n_tasks))
    if not last:
        gate_mask.append([True] * n_experts)
        gate_slot.append(n_tasks)
    return ExtractionLevel(d_in, hidden, expert_slot, gate_slot, gate_mask)


def ple_level(d_in: int, n_tasks: int, config: PLEConfig, last: bool) -> ExtractionLevel:
    return gated_level(d_in, n_tasks, config.n_task_experts, config.n_shared_experts, config.expert_hidden, last)


def build_ple(d_in: int, n_tasks: int, config: PLEConfig) -> GatedBody:
    levels = []
    for j in range(config.n_levels):
        levels.append(ple_level(d_in, n_tasks, config, last=j == config.n_levels - 1))
        d_in = levels[-1].out_dim
    return GatedBody(levels)


def build_ml_mmoe(d_in: int, n_tasks: int, config: MLMMoEConfig) -> GatedBody:
    levels = []
    for j in range(config.n_levels):
        last = j == config.n_levels - 1
        levels.append(gated_level(d_in, n_tasks, 0, config.n_experts, config.expert_hidden, last))
        d_in = levels[-1].out_dim
    return GatedBody(levels)
