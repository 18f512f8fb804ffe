"""torch-rechub's PLE trained on the same encoded rows, timed the same way as ours (run in its venv).

Reads the .npz that bench/train_throughput.py writes, builds torch_rechub.models.multi_task.PLE with
the same sizes (per-feature embeddings of the same dim, the same experts, gates and towers; rechub's
MLP adds BatchNorm after each Linear, as the library does), trains with Adam on the same batches
with the same masked per-task losses, and prints one JSON line: samples/s over the timed steps.

    bench/.venvs/rechub/bin/python bench/peers/rechub_train.py data.npz --steps 60 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from rechub_common import build, inputs, masked_loss


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    d = np.load(args.data, allow_pickle=False)
    model, sparse_names, dense_names = build("ple", d)
    binary = [bool(b) for b in d["binary"]]
    n_params = sum(p.numel() for p in model.parameters())
    sparse, dense = torch.from_numpy(d["sparse_ids"]), torch.from_numpy(d["dense"])
    labels, masks = torch.from_numpy(d["labels"]), torch.from_numpy(d["masks"])
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))
    model.train()

    def step(i: int) -> None:
        start = (i * args.batch_size) % max(len(order) - args.batch_size, 1)
        idx = order[start : start + args.batch_size]
        probs = model(inputs(sparse[idx], dense[idx], sparse_names, dense_names))  # (B, K), sigmoid-ed by rechub
        total = masked_loss(probs, labels[idx], masks[idx], binary).sum()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    for i in range(args.warmup):
        step(i)
    t = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    seconds = time.perf_counter() - t
    print(json.dumps({"samples_per_second": args.steps * args.batch_size / seconds, "seconds": seconds,
                      "steps": args.steps, "batch_size": args.batch_size, "threads": args.threads,
                      "parameters": n_params, "torch": torch.__version__}))  # fmt: skip


if __name__ == "__main__":
    main()
