"""MMoE (Ma et al., KDD 2018) and OMoE (one gate for all tasks): one level of shared experts.

MMoE: E experts all read the embedding; task k's gate, also fed by the embedding, mixes all E.
OMoE: the same experts with a single gate; its one mixture feeds every task's tower.
"""

from __future__ import annotations

from pydantic.dataclasses import dataclass

from training.models.parts import EXPERT_SIZES, BaseConfig, ExtractionLevel, GatedBody
from training.search_space import Int, Space
from training.settings_types import STRICT, Count, Sizes


@dataclass(frozen=True, config=STRICT)
class MoEConfig(BaseConfig):
    n_experts: Count = 4
    expert_hidden: Sizes = (128, 64)


SEARCH: Space = {"n_experts": Int(2, 8), "expert_hidden": EXPERT_SIZES}


def build_mmoe(d_in: int, n_tasks: int, config: MoEConfig) -> GatedBody:
    return _moe(d_in, n_gates=n_tasks, config=config)


def build_omoe(d_in: int, n_tasks: int, config: MoEConfig) -> GatedBody:
    return _moe(d_in, n_gates=1, config=config)  # output (1, B, h) broadcasts to the K towers


def _moe(d_in: int, n_gates: int, config: MoEConfig) -> GatedBody:
    n = config.n_experts
    level = ExtractionLevel(d_in, config.expert_hidden, [0] * n, [0] * n_gates, [[True] * n] * n_gates)
    return GatedBody([level])
