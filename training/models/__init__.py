"""Multi-task ranking models: embedding -> family-specific body -> per-task towers.

The exported module takes the feature transform's two inputs and returns one tensor per task:
binary tasks as probabilities, regressions in [0, 1] through a sigmoid, others as raw values.
The loss lives in training/losses.py, so the exported graph has none.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Sequence

import torch
from torch import nn

from service.modelspec import TaskSpec
from training.models.parts import FeatureEmbedding, Towers
from training.models.ple import PLEConfig, build_ple_body

FAMILIES = {"ple": PLEConfig, "cgc": PLEConfig}


def default_config(family: str):
    if family == "cgc":
        return PLEConfig(n_levels=1)
    if family in FAMILIES:
        return FAMILIES[family]()
    raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")


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
        self.embedding = FeatureEmbedding(cardinalities, config.embedding_dim, n_dense)
        self.levels = build_ple_body(self.embedding.out_dim, len(tasks), config)
        self.towers = Towers(len(tasks), self.levels[-1].out_dim, config.tower_hidden)
        self.register_buffer(
            "squash", torch.tensor([squashes(t) for t in tasks], dtype=torch.bool), persistent=False
        )

    def hyperparameters(self) -> dict:
        return {"family": self.family, **asdict(self.config)}

    def logits(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """(B, S) int64, (B, D) float32 -> (K, B) pre-activation outputs."""
        h = self.embedding(sparse_ids, dense).unsqueeze(0)  # (1, B, d)
        for level in self.levels:
            h, _ = level(h)  # (G, B, h)
        return self.towers(h)  # (K, B)

    def forward(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.logits(sparse_ids, dense)
        out = torch.where(self.squash.unsqueeze(1), torch.sigmoid(z), z)  # (K, B)
        return tuple(out.unbind(0))  # K tensors of (B,)


def build_model(family, tasks, cardinalities, n_dense, config=None) -> MultiTaskModel:
    return MultiTaskModel(family, config or default_config(family), tasks, cardinalities, n_dense)
