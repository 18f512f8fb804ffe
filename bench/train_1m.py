"""A measured million-row training run: `ranker-train --data videolog` with PLE, figures to JSON.

    nice -n 10 .venv/bin/python -m bench.train_1m [--impressions 1000000] [--epochs N] [--threads N] [--note TEXT]

Simulates N impressions, trains the default PLE (ranker-train's defaults: 80/10/10 split, batch
1024, Adam 3e-3, 3 epochs unless --epochs) and exports it to a temporary folder. Records the wall
time of the whole command (simulation, encoding, training, evaluation, export), the trainer's own
training seconds and samples/s, per-task validation/test AUC or MSE, and `uptime` before and after
(the development machine is shared) in bench/results/train_1m.json.

--threads sets torch's CPU threads. On the shared 2-core machine under load, 2 threads at nice 10
ran ~17x slower than 1 (each step's threads wait at a barrier for the one that lost its core),
so the recorded run uses 1; on a quiet machine 2 threads were faster (bench/train_throughput.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import BIN, ROOT, machine, print_table, write_result


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def torch_info() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"torch": torch.__version__, "gpu": gpu}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impressions", type=int, default=1_000_000)
    p.add_argument("--epochs", type=int, default=None, help="default: ranker-train's (3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: ranker-train's, all cores)")
    p.add_argument("--note", default="")
    args = p.parse_args()
    uptime_before = uptime()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["ranker-train", "--data", "videolog", "--model", "ple",
               "--set", f"data.videolog.n_impressions={args.impressions}",
               *(["--epochs", str(args.epochs)] if args.epochs else []),
               *(["--threads", str(args.threads)] if args.threads else [])]  # fmt: skip
        start = time.perf_counter()
        outputs = ["--out", f"{tmp}/models", "--features-out", f"{tmp}/features"]
        run = subprocess.run([str(BIN / cmd[0]), *cmd[1:], *outputs], capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - start
        if run.returncode != 0:
            print(run.stderr, file=sys.stderr)
            return run.returncode
        metrics = json.loads((Path(run.stdout.strip().splitlines()[-1]) / "metrics.json").read_text())
    uptime_after = uptime()

    tasks = [k.split(".", 1)[1] for k in metrics if k.startswith("test.")]
    per_task = {t: {split: {m: metrics[f"{split}.{t}"][m] for m in ("auc", "mse") if m in metrics[f"{split}.{t}"]}
                    for split in ("validation", "test")} for t in tasks}  # fmt: skip
    training, host, torch_ = metrics["training"], machine(), torch_info()
    figures = {
        "what": f"ranker-train --data videolog --model ple on {args.impressions:,} simulated impressions",
        "command": " ".join(cmd),
        "machine_summary": f"{host['cores']}-core {host['cpu']}, {'GPU ' + torch_['gpu'] if torch_['gpu'] else 'no GPU'}",
        "torch": torch_,
        "rows": metrics["data"]["rows"],
        "epochs_run": training["epochs"],
        "best_epoch": training["best_epoch"] + 1,
        "wall_seconds": round(wall, 1),  # simulate + encode + train + evaluate + export
        "training_seconds": round(training["seconds"], 1),  # the epochs, with their validation passes
        "training_samples_per_second": round(training["samples_per_second"]),
        "metrics": per_task,
        "history": [{k: v for k, v in h.items() if k == "epoch" or k.startswith(("loss_", "val_"))}
                    for h in metrics["history"]],
        "uptime_before": uptime_before,
        "uptime_after": uptime_after,
        "note": args.note,
    }
    path = write_result("train_1m", figures)
    print_table(["task", "val AUC/MSE", "test AUC/MSE"],
                [[t, *(next(iter(m[s].values()), float("nan")) for s in ("validation", "test"))] for t, m in per_task.items()])  # fmt: skip
    print_table(["rows (train)", "epochs", "wall s", "train s", "samples/s"],
                [[figures["rows"]["train"], int(figures["epochs_run"]), figures["wall_seconds"],
                  figures["training_seconds"], figures["training_samples_per_second"]]])  # fmt: skip
    print(f"before: {uptime_before}\nafter:  {uptime_after}\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
