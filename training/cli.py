"""ranker-train: train a multi-task model, evaluate it, export a new version folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from training.data import videolog
from training.evaluate import format_metrics
from training.export import write_version
from training.models import FAMILIES
from training.train import TrainConfig, run_training

DATA_SETS = ["videolog"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ranker-train", description=__doc__)
    p.add_argument("--data", choices=DATA_SETS, default="videolog", help="training data (default videolog: the simulator)")
    p.add_argument("--model", choices=sorted(FAMILIES), default="ple", help="model family")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and batch order")
    p.add_argument("--out", type=Path, default=Path("models"), help="model repository (default ./models)")
    p.add_argument("--name", default=None, help="model name in the repository (default: the family)")
    p.add_argument("--impressions", type=int, default=videolog.VideoLogConfig.n_impressions,
                   help="videolog: number of simulated impressions")  # fmt: skip
    p.add_argument("--data-seed", type=int, default=videolog.VideoLogConfig.seed, help="videolog: simulator seed")
    p.add_argument("--features-out", type=Path, default=Path("data/features"),
                   help="videolog: where the user/item feature tables for the service go")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = videolog.simulate(videolog.VideoLogConfig(n_impressions=args.impressions, seed=args.data_seed))
    for path in videolog.write_feature_tables(log, args.features_out):
        print(f"wrote {path}", file=sys.stderr)
    dataset = videolog.to_dataset(log)
    result = run_training(dataset, args.model, TrainConfig(epochs=args.epochs, seed=args.seed),
                          log=lambda line: print(line, file=sys.stderr))  # fmt: skip
    print(f"validation metrics ({result.seconds:.1f}s, {result.samples_per_second:,.0f} samples/s):", file=sys.stderr)
    print(format_metrics(result.metrics["validation"]), file=sys.stderr)
    folder = write_version(result, args.out, args.name or args.model)
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
