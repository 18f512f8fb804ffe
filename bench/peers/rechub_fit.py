"""torch-rechub's PLE or MMOE trained and evaluated on a split we encoded (run in its venv).

The reference run of reports/experiments.md (experiment 2): experiments/census.py writes the
census split, encoded by our feature transform, with our model's sizes; this script trains rechub's
model with the same recipe (Adam, batch size, epochs, early stopping on the validation loss with
the same patience, masked per-task losses) and prints one JSON line with the test AUC per task.

    bench/.venvs/rechub/bin/python bench/peers/rechub_fit.py split.npz --family ple --seed 0
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
from rechub_common import build, inputs, masked_loss
from sklearn.metrics import roc_auc_score


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--family", choices=["ple", "mmoe"], default="ple")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    d = np.load(args.data, allow_pickle=False)
    model, sparse_names, dense_names = build(args.family, d)
    binary = [bool(b) for b in d["binary"]]
    split = {s: [torch.from_numpy(d[f"{s}_{a}"]) for a in ("sparse_ids", "dense", "labels", "masks")]
             for s in ("train", "val", "test")}  # fmt: skip

    @torch.no_grad()
    def predict(part: str) -> torch.Tensor:
        model.eval()
        sparse, dense = split[part][:2]
        return torch.cat([model(inputs(sparse[i : i + 8192], dense[i : i + 8192], sparse_names, dense_names))
                          for i in range(0, len(sparse), 8192)])  # fmt: skip

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    sparse, dense, labels, masks = split["train"]
    best, start, epochs = (float("inf"), -1, None), time.perf_counter(), 0
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            if len(idx) < 2:  # BatchNorm in rechub's MLP cannot train on one row
                continue
            loss = masked_loss(model(inputs(sparse[idx], dense[idx], sparse_names, dense_names)), labels[idx], masks[idx], binary).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epochs += 1
        val_loss = float(masked_loss(predict("val"), split["val"][2], split["val"][3], binary).sum())
        if val_loss < best[0]:
            best = (val_loss, epoch, copy.deepcopy(model.state_dict()))
        elif args.patience and epoch - best[1] >= args.patience:
            break
    model.load_state_dict(best[2])
    probs, labels, masks = predict("test").numpy(), split["test"][2].numpy(), split["test"][3].numpy()
    names = [str(n) for n in d["task_names"]]
    test = {names[k]: {"auc": float(roc_auc_score(labels[masks[:, k], k], probs[masks[:, k], k]))} for k in range(len(names))}
    print(json.dumps({"family": args.family, "seed": args.seed, "test": test, "epochs": epochs, "best_epoch": best[1],
                      "seconds": round(time.perf_counter() - start, 2),
                      "parameters": sum(q.numel() for q in model.parameters()), "torch": torch.__version__}))  # fmt: skip


if __name__ == "__main__":
    main()
