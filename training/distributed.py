"""Where training runs: the device, and data-parallel training under torchrun.

`--device auto|cpu|cuda`: auto takes CUDA when this torch build sees a GPU. Under torchrun every
process builds the same model from the same seed, takes its share of each global batch and
DistributedDataParallel averages the gradients, so all processes hold the same weights after every
step. Each task's loss is its masked mean over the whole global batch (`loss_denominators`), not
the average of the processes' own masked means, which would weigh a row by how many in-space rows
its process happened to get. They all evaluate the full validation split and so take the same
early-stopping decision; only rank 0 exports. On CUDA each process trains on GPU LOCAL_RANK and
the backend is NCCL; on the CPU it is gloo.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' -> this process's device; ValueError when CUDA is asked for but absent."""
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose one of {list(DEVICES)}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device cuda, but torch {torch.__version__} sees no CUDA GPU "
                         "(a CPU-only build, or no GPU visible); use --device cpu or auto")  # fmt: skip
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # torchrun: one GPU per process on this node
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank}, but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)  # NCCL and default CUDA tensors use this process's GPU
    return device


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ  # set by torchrun for every process it starts


def distributed_context(device: torch.device = torch.device("cpu")) -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; joins the process group on first use.

    Under torchrun the group is joined even with one process (`--nproc_per_node 1`), so a one-GPU
    machine runs the same NCCL and DistributedDataParallel path as a multi-GPU one."""
    if not under_torchrun():
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device))
    return dist.get_rank(), dist.get_world_size()


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the process group; on CUDA bound to this process's GPU."""
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def loss_denominators(masks: torch.Tensor, world: int) -> torch.Tensor | None:
    """(b, K) bool -> (K,) divisors of this process's masked loss sums S_r such that DDP's gradient
    average is each task's masked mean over the global batch: mean_r(S_r / (N / world)) = sum_r S_r / N,
    N the in-space rows of all processes together (at least 1; one small all_reduce per step).
    None in a single process: masked_task_losses then divides by the batch's own count."""
    if world == 1:
        return None
    counts = masks.sum(0).to(torch.float32)  # (K,) this process's in-space rows
    dist.all_reduce(counts)
    return counts.clamp(min=1.0) / world


class TrainingStep(nn.Module):
    """model.training_outputs as forward, so DistributedDataParallel's gradient hooks see the training path."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.model.training_outputs(sparse_ids, dense)  # (K, B) logits, penalty inputs
