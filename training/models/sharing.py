"""Families without gates: hard parameter sharing and the PLE paper's Figure 1 sharing patterns.

- shared-bottom: one bottom MLP for all tasks; its output feeds every tower.
- single-task: one network per task, nothing shared (not even the embedding table): the
  baseline of the MTL gain. Trained jointly, but with no common parameter each task's gradients
  reach only its own network, so it equals K separate runs.
- customized (Fig. 1c, customized sharing): a shared bottom and one bottom per task; tower k reads
  the concatenation [shared bottom, task k's bottom].
- asymmetric (Fig. 1b, asymmetric sharing): one bottom per task; tower k reads its own bottom
  concatenated with the mean of the bottoms of the tasks before it in the task order (the first
  task reads only its own), so information flows one way, e.g. from click to the post-click tasks.
"""

from __future__ import annotations

import torch
from pydantic.dataclasses import dataclass

from training.models.parts import EXPERT_SIZES, BaseConfig, Body, StackedMLP, mix_members
from training.search_space import Choice, Space
from training.settings_types import STRICT, Sizes


@dataclass(frozen=True, config=STRICT)
class BottomConfig(BaseConfig):
    bottom_hidden: Sizes = (128, 64)


@dataclass(frozen=True, config=STRICT)
class CustomizedConfig(BaseConfig):
    shared_hidden: Sizes = (128, 64)
    task_hidden: Sizes = (64, 32)


BOTTOM_SEARCH: Space = {"bottom_hidden": Choice(((64,), (128,), (128, 64), (256, 128), (512, 256)))}
CUSTOMIZED_SEARCH: Space = {"shared_hidden": EXPERT_SIZES, "task_hidden": EXPERT_SIZES}


class Bottoms(Body):
    """n stacked bottoms: (C, B, d) -> (n, B, h). n = 1 is a shared bottom."""

    def __init__(self, n: int, d_in: int, hidden, embedding_copies: int = 1):
        super().__init__()
        self.mlp = StackedMLP(n, d_in, hidden)
        self.out_dim = self.mlp.out_dim
        self.embedding_copies = embedding_copies

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.mlp(x), []


class Customized(Body):
    """(1, B, d) -> (K, B, h_shared + h_task)."""

    def __init__(self, d_in: int, n_tasks: int, config: CustomizedConfig):
        super().__init__()
        self.shared = StackedMLP(1, d_in, config.shared_hidden)
        self.task = StackedMLP(n_tasks, d_in, config.task_hidden)
        self.n_tasks = n_tasks
        self.out_dim = self.shared.out_dim + self.task.out_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        shared = self.shared(x).expand(self.n_tasks, -1, -1)  # (K, B, h_s)
        return torch.cat([shared, self.task(x)], dim=2), []  # (K, B, h_s + h_t)


def earlier_tasks_matrix(n_tasks: int) -> torch.Tensor:
    """(K, K) row k averages tasks j < k; row 0 is zero (the first task reads no other task)."""
    lower = torch.tril(torch.ones(n_tasks, n_tasks), diagonal=-1)
    return lower / lower.sum(dim=1, keepdim=True).clamp(min=1.0)


class Asymmetric(Body):
    """(1, B, d) -> (K, B, 2h): [own bottom, mean of earlier tasks' bottoms]."""

    def __init__(self, d_in: int, n_tasks: int, config: BottomConfig):
        super().__init__()
        self.bottoms = StackedMLP(n_tasks, d_in, config.bottom_hidden)
        self.register_buffer("reads", earlier_tasks_matrix(n_tasks), persistent=False)  # (K, K)
        self.out_dim = 2 * self.bottoms.out_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.bottoms(x)  # (K, B, h)
        return torch.cat([h, mix_members(self.reads, h)], dim=2), []  # (K, B, 2h)


def build_shared_bottom(d_in: int, n_tasks: int, config: BottomConfig) -> Bottoms:
    return Bottoms(1, d_in, config.bottom_hidden)  # (1, B, h) broadcasts to the K towers


def build_single_task(d_in: int, n_tasks: int, config: BottomConfig) -> Bottoms:
    return Bottoms(n_tasks, d_in, config.bottom_hidden, embedding_copies=n_tasks)


def build_customized(d_in: int, n_tasks: int, config: CustomizedConfig) -> Customized:
    return Customized(d_in, n_tasks, config)


def build_asymmetric(d_in: int, n_tasks: int, config: BottomConfig) -> Asymmetric:
    return Asymmetric(d_in, n_tasks, config)
