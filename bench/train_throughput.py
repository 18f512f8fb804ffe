"""Training throughput: our PLE (ranker-train's model and loop) vs torch-rechub's PLE, same data.

1. Simulates the videolog data (`--impressions`), fits and encodes it with the project's feature
   transform, and saves the encoded training split for the peer (bench/.cache/train_data.npz).
2. Times our model with ranker-train's training step (model.logits, masked_task_losses, Adam) on
   `--steps` batches of `--batch-size` rows after a warm-up; the same for torch-rechub's PLE in its
   own virtual environment (bench/peers/rechub_train.py), same sizes, same batches, same losses.
3. Also runs `run_training` (what `ranker-train` runs) for one epoch and reports the samples/s it
   prints, which includes the per-epoch validation pass.
Prints a table and writes bench/results/train_throughput.json.

    python -m bench.train_throughput [--impressions 60000] [--steps 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from bench.common import ROOT, print_table, write_result
from contract.features import FeatureTransform
from training.data import videolog
from training.losses import masked_task_losses
from training.models import build_model, default_config
from training.train import TrainConfig, encode, fit_features, run_training

RECHUB = ROOT / "bench" / ".venvs" / "rechub" / "bin" / "python"
CACHE = ROOT / "bench" / ".cache"


def time_ours(model, sparse, dense, labels, masks, tasks, steps, warmup, batch_size, seed) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    model.train()

    def step(i: int) -> None:
        start = (i * batch_size) % max(len(order) - batch_size, 1)
        idx = order[start : start + batch_size]
        loss = masked_task_losses(model.logits(sparse[idx], dense[idx]), labels[idx], masks[idx], tasks).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(warmup):
        step(i)
    t = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    return steps * batch_size / (time.perf_counter() - t)


def run_rechub(data: Path, args, threads: int) -> dict:
    if not RECHUB.exists():
        return {"error": f"{RECHUB} missing: run bench/setup_peers.sh"}
    out = subprocess.run([str(RECHUB), str(ROOT / "bench" / "peers" / "rechub_train.py"), str(data),
                          "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size",
                          str(args.batch_size), "--threads", str(threads), "--seed", str(args.seed)],
                         capture_output=True, text=True)  # fmt: skip
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impressions", type=int, default=60_000)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--threads", default=f"1,{os.cpu_count() or 1}", help="torch thread counts to time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-epoch", action="store_true", help="skip the one-epoch run_training figure")
    args = p.parse_args()
    args.threads = sorted({int(t) for t in args.threads.split(",")})
    torch.manual_seed(args.seed)
    load_before = os.getloadavg()

    dataset = videolog.to_dataset(videolog.simulate(videolog.VideoLogConfig(n_impressions=args.impressions)))
    train, _, _ = dataset.split(seed=0)
    transform = FeatureTransform(fit_features(train))
    enc = encode(transform, train)
    config = default_config("ple")
    model = build_model("ple", dataset.tasks, transform.cardinalities(), transform.n_dense, config)
    n_params = sum(p.numel() for p in model.parameters())
    data = CACHE / "train_data.npz"
    data.parent.mkdir(parents=True, exist_ok=True)
    np.savez(data, sparse_ids=enc.sparse_ids, dense=enc.dense, labels=train.labels, masks=train.masks,
             cardinalities=np.asarray(transform.cardinalities()), sparse_names=np.asarray([s.name for s in transform.sparse]),
             dense_names=np.asarray([s.name for s in transform.dense]),
             binary=np.asarray([t.kind == "binary" for t in dataset.tasks]),
             hyperparameters=np.asarray(json.dumps(asdict(config))))  # fmt: skip

    tensors = [torch.from_numpy(a) for a in (enc.sparse_ids, enc.dense, train.labels, train.masks)]
    rows, result = [], {"ours": {}, "torch_rechub": {}, "parameters": {"ours": n_params}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        model = build_model("ple", dataset.tasks, transform.cardinalities(), transform.n_dense, config)
        ours = time_ours(model, *tensors, dataset.tasks, args.steps, args.warmup, args.batch_size, args.seed)
        result["ours"][threads] = ours
        peer = run_rechub(data, args, threads)
        result["torch_rechub"][threads] = peer
        theirs = peer.get("samples_per_second")
        result["parameters"]["torch_rechub"] = peer.get("parameters")
        rows.append([threads, round(ours), round(theirs) if theirs else peer.get("error", "")[-80:],
                     f"{ours / theirs:.2f}x" if theirs else ""])  # fmt: skip

    if not args.skip_epoch:
        torch.set_num_threads(max(args.threads))
        r = run_training(dataset, "ple", TrainConfig(epochs=1, seed=args.seed), log=lambda line: None)
        result["run_training_one_epoch"] = {"samples_per_second": r.samples_per_second, "seconds": r.seconds,
                                            "threads": max(args.threads)}  # fmt: skip
    load_after = os.getloadavg()
    print(f"{len(train):,} training rows, batch {args.batch_size}, {n_params:,} / "
          f"{result['parameters']['torch_rechub']} parameters (ours / torch-rechub); "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")  # fmt: skip
    print_table(["torch threads", "ours samples/s", "torch-rechub samples/s", "ours / rechub"], rows)
    if "run_training_one_epoch" in result:
        print(f"run_training (ranker-train's loop), 1 epoch incl. validation: "
              f"{result['run_training_one_epoch']['samples_per_second']:,.0f} samples/s")
    path = write_result("train_throughput", {
        "impressions": args.impressions, "train_rows": len(train), "batch_size": args.batch_size,
        "steps": args.steps, "hyperparameters": asdict(config),
        "load_average_1_5_15": {"before": load_before, "after": load_after}, **result})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
