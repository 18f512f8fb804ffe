"""What the torch-rechub reference scripts share (they run in bench/.venvs/rechub, without our package):
the features and the models built from an .npz of encoded rows, and the masked per-task loss."""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from torch_rechub.basic.features import DenseFeature, SparseFeature
from torch_rechub.models.multi_task import MMOE, PLE


def features(d: np.lib.npyio.NpzFile, embedding_dim: int) -> tuple[list, list[str], list[str]]:
    sparse_names, dense_names = [str(n) for n in d["sparse_names"]], [str(n) for n in d["dense_names"]]
    found = [SparseFeature(n, vocab_size=int(c), embed_dim=embedding_dim) for n, c in zip(sparse_names, d["cardinalities"])]
    return found + [DenseFeature(n) for n in dense_names], sparse_names, dense_names


def build(family: str, d: np.lib.npyio.NpzFile) -> tuple[torch.nn.Module, list[str], list[str]]:
    """rechub's PLE or MMOE with the sizes of our model's hyper-parameters (stored in the .npz)."""
    h = json.loads(str(d["hyperparameters"]))
    feats, sparse_names, dense_names = features(d, h["embedding_dim"])
    n_tasks = len(d["binary"])
    towers = [{"dims": list(h["tower_hidden"])}] * n_tasks
    if family == "ple":
        model = PLE(feats, task_types=["classification"] * n_tasks, n_level=h["n_levels"],
                    n_expert_specific=h["n_task_experts"], n_expert_shared=h["n_shared_experts"],
                    expert_params={"dims": list(h["expert_hidden"])}, tower_params_list=towers)  # fmt: skip
    elif family == "mmoe":
        model = MMOE(feats, task_types=["classification"] * n_tasks, n_expert=h["n_experts"],
                     expert_params={"dims": list(h["expert_hidden"])}, tower_params_list=towers)  # fmt: skip
    else:
        raise ValueError(f"no rechub reference for {family!r}")
    return model, sparse_names, dense_names


def inputs(sparse: torch.Tensor, dense: torch.Tensor, sparse_names: list[str], dense_names: list[str]) -> dict:
    return {n: sparse[:, j] for j, n in enumerate(sparse_names)} | {n: dense[:, j] for j, n in enumerate(dense_names)}


def masked_loss(probs: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, binary: list[bool]) -> torch.Tensor:
    """Per task: BCE (binary) or squared error on rechub's sigmoid outputs, averaged over the task's
    own samples; (K,)."""
    m = masks.float()
    losses = []
    for k, is_binary in enumerate(binary):
        p_k = probs[:, k]
        loss = F.binary_cross_entropy(p_k, labels[:, k], reduction="none") if is_binary else (p_k - labels[:, k]) ** 2
        losses.append((loss * m[:, k]).sum() / m[:, k].sum().clamp(min=1.0))
    return torch.stack(losses)
