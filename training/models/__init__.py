"""Multi-task ranking models: embedding -> family-specific body -> per-task towers.

Every family's body has one contract: (C, B, d) embedded input -> (K or 1, B, h) tower inputs
and a list of gate weights (G, B, E) per gated level (empty for ungated families).
The exported module takes the feature transform's two inputs and returns one tensor per task:
binary tasks as probabilities, regressions in [0, 1] through a sigmoid, others as raw values;
with `gate_outputs`, each gated level's weights follow as (B, G, E) tensors named `gates_<j>`.
The loss lives in training/losses.py, so the exported graph has none; `training_outputs` hands the
trainer what a family's penalty needs (sluice's subspaces) beside the logits.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from contract.modelspec import TaskSpec
from training.models import adatt, moe, ple, sharing, stitch
from training.models.parts import Body, FeatureEmbedding, StackedMLP, Towers
from training.models.ple import PLEConfig
from training.search_space import Space


class Family(NamedTuple):
    config: Callable[[], Any]  # the default config
    build: Callable[[int, int, Any], Body]  # (d_in, n_tasks, config) -> body
    search: Space  # what ranker-tune searches beside BASE_SEARCH (training/search_space.py)


FAMILIES: dict[str, Family] = {
    "ple": Family(PLEConfig, ple.build_ple, ple.PLE_SEARCH),
    "cgc": Family(lambda: PLEConfig(n_levels=1), ple.build_ple, ple.CGC_SEARCH),
    "ml-mmoe": Family(ple.MLMMoEConfig, ple.build_ml_mmoe, ple.ML_MMOE_SEARCH),
    "mmoe": Family(moe.MoEConfig, moe.build_mmoe, moe.SEARCH),
    "omoe": Family(moe.MoEConfig, moe.build_omoe, moe.SEARCH),
    "shared-bottom": Family(sharing.BottomConfig, sharing.build_shared_bottom, sharing.BOTTOM_SEARCH),
    "single-task": Family(sharing.BottomConfig, sharing.build_single_task, sharing.BOTTOM_SEARCH),
    "customized": Family(sharing.CustomizedConfig, sharing.build_customized, sharing.CUSTOMIZED_SEARCH),
    "asymmetric": Family(sharing.BottomConfig, sharing.build_asymmetric, sharing.BOTTOM_SEARCH),
    "cross-stitch": Family(stitch.CrossStitchConfig, stitch.build_cross_stitch, stitch.CROSS_STITCH_SEARCH),
    "sluice": Family(stitch.SluiceConfig, stitch.build_sluice, stitch.SLUICE_SEARCH),
    "adatt": Family(adatt.AdaTTConfig, adatt.build_adatt, adatt.SEARCH),
    "adatt-sp": Family(lambda: adatt.AdaTTConfig(n_shared_experts=2), adatt.build_adatt, adatt.SP_SEARCH),
}


def default_config(family: str):
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[family].config()


def config_with(family: str, overrides: Mapping[str, Any], base=None):
    """The family's config with fields replaced (TOML lists become tuples). The config dataclass
    validates itself: a pydantic ValidationError (a ValueError) names a field of the wrong type or
    range, or one the family does not have."""
    config = base or default_config(family)
    names = {f.name for f in dataclasses.fields(config)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"{family} has no hyper-parameter(s) {sorted(unknown)}; it has {sorted(names)}")
    return dataclasses.replace(config, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def squashes(task: TaskSpec) -> bool:
    """Whether the task's output goes through a sigmoid (probabilities, or values in [0, 1])."""
    return task.kind == "binary" or task.value_range == (0.0, 1.0)


class MultiTaskModel(nn.Module):
    def __init__(
        self,
        family: str,
        config,
        tasks: Sequence[TaskSpec],
        cardinalities: Sequence[int],
        n_dense: int,
    ):
        super().__init__()
        self.family = family
        self.config = config
        self.tasks = list(tasks)
        d_in = len(cardinalities) * config.embedding_dim + n_dense
        self.body: Body = FAMILIES[family].build(d_in, len(tasks), config)
        self.embedding = FeatureEmbedding(cardinalities, config.embedding_dim, n_dense, copies=self.body.embedding_copies)
        self.towers = Towers(len(tasks), self.body.out_dim, config.tower_hidden)
        for mlp in self.body.modules():  # gates are single layers without an activation: never dropped
            if isinstance(mlp, StackedMLP):
                mlp.dropout = config.dropout
        self.towers.mlp.dropout = config.tower_dropout
        self.register_buffer(
            "squash", torch.tensor([squashes(t) for t in tasks], dtype=torch.bool), persistent=False
        )

    @property
    def levels(self) -> Sequence[nn.Module]:
        """The gated levels (empty for ungated families)."""
        return self.body.gated_levels()

    def hyperparameters(self) -> dict:
        return {"family": self.family, **dataclasses.asdict(self.config)}

    def gate_shapes(self) -> list[tuple[int, int]]:
        """(gates, experts) of each gated level."""
        return self.body.gate_shapes()

    def gate_labels(self, level: int) -> list[str]:
        """What each gate of a level mixes for: a task's name, 'shared', or 'all' (OMoE's one gate)."""
        n_gates = self.gate_shapes()[level][0]
        if n_gates < len(self.tasks):
            return ["all"] * n_gates
        return [t.name for t in self.tasks] + ["shared"] * (n_gates - len(self.tasks))

    @property
    def output_names(self) -> list[str]:
        names = [t.output for t in self.tasks]
        if self.config.gate_outputs:
            names += [f"gates_{j}" for j in range(len(self.gate_shapes()))]
        return names

    def encode(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, S) int64, (B, D) float32 -> tower inputs (K or 1, B, h), gate weights [(G, B, E)]."""
        return self.body(self.embedding(sparse_ids, dense))

    def logits(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """(B, S) int64, (B, D) float32 -> (K, B) pre-activation outputs."""
        h, _ = self.encode(sparse_ids, dense)
        return self.towers(h)  # (K, B)

    def training_outputs(
        self, sparse_ids: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(K, B) logits and what the training penalties read: each sluice layer's subspaces
        (K, B, S, w/S), empty for the other families. Only the trainer calls this, so nothing of
        the penalty reaches the exported graph."""
        h, subspaces = self.body.with_subspaces(self.embedding(sparse_ids, dense))
        return self.towers(h), subspaces  # (K, B), [(K, B, S, w/S)]

    def penalty_weight(self) -> float:
        """Weight of the subspace orthogonality penalty in the training loss (0 for most families)."""
        return float(getattr(self.config, "orthogonality_weight", 0.0))

    def forward(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h, gates = self.encode(sparse_ids, dense)
        z = self.towers(h)  # (K, B)
        out = torch.where(self.squash.unsqueeze(1), torch.sigmoid(z), z)  # (K, B)
        extra = tuple(g.transpose(0, 1) for g in gates) if self.config.gate_outputs else ()  # (B, G, E)
        return tuple(out.unbind(0)) + extra  # K tensors of (B,), then the gates


def build_model(family, tasks, cardinalities, n_dense, config=None) -> MultiTaskModel:
    return MultiTaskModel(family, config or default_config(family), tasks, cardinalities, n_dense)
