"""Data-parallel training under torchrun with PyTorch's DistributedDataParallel.

Every process builds the same model from the same seed, takes its share of each global batch and
DDP averages the gradients, so all processes hold the same weights after every step. They all
evaluate the full validation split and so take the same early-stopping decision; only rank 0
exports. The backend is gloo: the trainer's tensors live on the CPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def distributed_context() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; joins the process group on first use."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


class TrainingStep(nn.Module):
    """model.training_outputs as forward, so DistributedDataParallel's gradient hooks see the training path."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.model.training_outputs(sparse_ids, dense)  # (K, B) logits, penalty inputs
