"""ranker-train: train a multi-task model, evaluate it, export a new version folder.

Every hyper-parameter comes from defaults, a TOML file (--config), `--set section.key=value`
overrides and the flags below, in that order of precedence (training/config.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from contract.modelspec import tasks_interface
from training import config as run_config
from training.config import RunConfig
from training.data.sets import DATA_SETS, load_data
from training.distributed import DEVICES, resolve_device
from training.evaluate import format_metrics, mtl_gain
from training.export import InterfaceChanged, check_interface, write_version
from training.losses import check_task_names
from training.models import FAMILIES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ranker-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--config", type=Path, default=None, help="TOML file with [run], [train], [model], [data.<name>]")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="assignments",
                   help="override any config value, e.g. --set model.n_levels=3 --set train.loss_gamma.ctr=0.9 "
                        "(train.loss_w0 / loss_gamma name tasks of the chosen data: ctr is videolog's)")  # fmt: skip
    p.add_argument("--data", choices=sorted(DATA_SETS), default=None, help="training data (default videolog: the simulator)")
    p.add_argument("--model", choices=sorted(FAMILIES), default=None, help="model family (default ple)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed of initialisation and batch order")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--patience", type=int, default=None, help="early stopping patience in epochs (0: off)")
    p.add_argument("--gate-outputs", action="store_true", default=None, help="export gate weights as extra outputs")
    p.add_argument("--out", type=Path, default=None, help="model repository (default ./models)")
    p.add_argument("--name", default=None, help="model name in the repository (default: the family)")
    p.add_argument("--allow-interface-change", action="store_true",
                   help="add the version even if the model's latest version has other tasks, outputs or features "
                        "(refused by default: the service would not route to it by itself)")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder of the full census / KuaiRand files (default $RANKER_DATA_DIR, else <repo>/../shared/data; "
                        "bash scripts/fetch-data.sh downloads them; --set data.census.sample=true uses the committed "
                        "sample instead; docs/data.md)")  # fmt: skip
    p.add_argument("--impressions", type=int, default=None, help="videolog: number of simulated impressions")
    p.add_argument("--data-seed", type=int, default=None, help="videolog / synthetic: generator seed")
    p.add_argument("--features-out", type=Path, default=Path("data/features"),
                   help="videolog: where the user/item feature tables for the service go")  # fmt: skip
    p.add_argument("--baseline-metrics", type=Path, default=None,
                   help="metrics.json of a single-task run: adds the MTL gain (PLE paper Eq. 11) per task")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--device", choices=DEVICES, default=None,
                   help="where to train (default auto: CUDA when torch sees a GPU); evaluation and export run on the CPU")  # fmt: skip
    args = p.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be >= 1")
    return args


def flag_overrides(args: argparse.Namespace) -> dict:
    """The explicit flags as a config fragment (flags not given stay out)."""
    run = {k: str(v) if isinstance(v, Path) else v
           for k, v in {"data": args.data, "model": args.model, "out": args.out, "name": args.name,
                        "threads": args.threads, "data_dir": args.data_dir}.items() if v is not None}  # fmt: skip
    train = {k: v for k, v in {"epochs": args.epochs, "seed": args.seed, "lr": args.lr, "batch_size": args.batch_size,
                               "patience": args.patience, "device": args.device}.items() if v is not None}  # fmt: skip
    out: dict = {"run": run, "train": train}
    if args.gate_outputs:
        out["model"] = {"gate_outputs": True}
    return out


def data_overrides(args: argparse.Namespace, data: str) -> dict:
    """--impressions and --data-seed as options of the chosen data set's loader."""
    options = {"n_impressions": args.impressions if data == "videolog" else None,
               "seed": args.data_seed if data in ("videolog", "synthetic") else None}  # fmt: skip
    return {"data": {data: {k: v for k, v in options.items() if v is not None}}}


def check_outputs(cfg: RunConfig, args: argparse.Namespace) -> None:
    """--out, --features-out and --baseline-metrics, checked before hours of training."""
    out = Path(cfg.run.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission
        raise ValueError(f"--out {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out {out}: not writable")
    if args.features_out is not None and args.features_out.exists() and not args.features_out.is_dir():
        raise ValueError(f"--features-out {args.features_out}: a file is in the way of the folder")
    if args.baseline_metrics is not None:
        try:
            json.loads(args.baseline_metrics.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"--baseline-metrics {args.baseline_metrics}: {exc}") from None


def checked_config(args: argparse.Namespace) -> RunConfig:
    """The run's configuration, every section checked, and what it names checked too."""
    tables = run_config.load_tables(args.config, args.assignments, flag_overrides(args))
    tables = run_config.merge(tables, data_overrides(args, tables["run"].get("data", "videolog")))
    cfg = RunConfig.from_tables(tables)
    resolve_device(cfg.train.device)  # --device cuda without a GPU: say so before loading any data
    tasks = DATA_SETS[cfg.run.data].tasks(cfg.data)  # parquet: from the file's metadata
    check_task_names(tasks, loss_w0=cfg.train.loss_w0, loss_gamma=cfg.train.loss_gamma)
    check_outputs(cfg, args)
    if not args.allow_interface_change:  # another data set's model under this name: say so before training
        check_interface(Path(cfg.run.out) / cfg.run.version_name, tasks_interface(tasks))
    return cfg


def baseline_gain(path: Path, result) -> dict[str, dict[str, float]]:
    baseline = json.loads(path.read_text())
    gains = {}
    for split in ("validation", "test"):
        single = {k.split(".", 1)[1]: v for k, v in baseline.items() if k.startswith(f"{split}.")}
        gains[f"mtl_gain.{split}"] = mtl_gain(result.metrics[split], single)
    return gains


def main(argv: list[str] | None = None) -> int:
    from training.train import TrainingDiverged, run_parquet_training, run_training  # fast --help

    args = parse_args(argv)
    try:
        cfg = checked_config(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"ranker-train: {exc}", file=sys.stderr)
        return 2
    run = cfg.run
    if run.threads:
        torch.set_num_threads(run.threads)
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    try:
        if run.data == "parquet":  # streams: the training split is never loaded whole
            options = cfg.data
            result = run_parquet_training(options.path, run.model, cfg.train, cfg.model, log=say,
                                          chunk_rows=options.chunk_rows, max_eval_rows=options.max_eval_rows)  # fmt: skip
        else:
            try:
                dataset = load_data(run.data, cfg.data, run.data_dir,
                                    args.features_out if run.data == "videolog" else None)  # fmt: skip
            except (OSError, ValueError) as exc:  # a data folder or file missing, an option out of range
                print(f"ranker-train: cannot load --data {run.data}: {exc}", file=sys.stderr)
                return 2
            result = run_training(dataset, run.model, cfg.train, cfg.model, log=say)
    except TrainingDiverged as exc:
        print(f"ranker-train: {exc}", file=sys.stderr)
        return 1
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if result.rank > 0:  # data-parallel: rank 0 evaluates, exports and prints the folder
        return 0
    if args.baseline_metrics:
        result.extra_metrics.update(baseline_gain(args.baseline_metrics, result))
    print(f"validation metrics ({result.seconds:.1f}s, {result.samples_per_second:,.0f} samples/s):", file=sys.stderr)
    print(format_metrics(result.metrics["validation"]), file=sys.stderr)
    print("test metrics:", file=sys.stderr)
    print(format_metrics(result.metrics["test"]), file=sys.stderr)
    try:  # the whole interface (features, outputs) is known now
        folder = write_version(result, Path(run.out), run.version_name, args.allow_interface_change)
    except InterfaceChanged as exc:
        print(f"ranker-train: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
