"""ranker-train: train a multi-task model, evaluate it, export a new version folder.

Every hyper-parameter comes from defaults, a TOML file (--config), `--set section.key=value`
overrides and the flags below, in that order of precedence (training/config.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import sys
from pathlib import Path

import torch

from contract.modelspec import NAME_PATTERN, TaskSpec, tasks_interface
from training import config as run_config
from training.data import Dataset, census, data_root, kuairand, synthetic, videolog
from training.distributed import DEVICES, resolve_device
from training.evaluate import format_metrics, mtl_gain
from training.export import InterfaceChanged, check_interface, write_version
from training.models import FAMILIES, config_with

DATA_SETS = ["videolog", "census", "kuairand", "synthetic", "parquet"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ranker-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--config", type=Path, default=None, help="TOML file with [run], [train], [model], [data.<name>]")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="assignments",
                   help="override any config value, e.g. --set model.n_levels=3 --set train.loss_gamma.ctr=0.9 "
                        "(train.loss_w0 / loss_gamma name tasks of the chosen data: ctr is videolog's)")  # fmt: skip
    p.add_argument("--data", choices=DATA_SETS, default=None, help="training data (default videolog: the simulator)")
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
                   help="shared data sets (default $RANKER_DATA_DIR, else <repo>/../shared/data)")  # fmt: skip
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
    run = {k: v for k, v in {"data": args.data, "model": args.model, "out": args.out, "name": args.name,
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


def data_tasks(name: str, options: dict) -> list[TaskSpec]:
    """The chosen data set's tasks, known before any of its rows is loaded or read."""
    if name == "parquet":
        if "path" not in options:
            raise ValueError("--data parquet needs --set data.parquet.path=FILE")
        from training.data.stream import ParquetStream

        return ParquetStream(options["path"]).tasks  # from the file's metadata
    loaders = {"videolog": videolog, "census": census, "kuairand": kuairand, "synthetic": synthetic}
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}; known: {DATA_SETS}")
    return loaders[name].TASKS


def check_data_options(name: str, options: dict) -> None:
    """TypeError naming an option the data set's loader does not take, before anything is loaded."""
    takes = {"videolog": videolog.VideoLogConfig, "synthetic": synthetic.SyntheticConfig,
             "census": census.load, "kuairand": kuairand.load}.get(name)  # fmt: skip
    if takes is None:
        return  # parquet: data_tasks checks its path
    if isinstance(takes, type):
        names = {f.name for f in dataclasses.fields(takes)}
    else:
        names = set(list(inspect.signature(takes).parameters)[1:])  # after the path
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"data.{name} has no option(s) {unknown}; it has {sorted(names)}")


def check_outputs(run: dict, args: argparse.Namespace) -> None:
    """The model name, --out, --features-out and --baseline-metrics, checked before hours of training."""
    name = run["name"] or run["model"]
    if not re.fullmatch(NAME_PATTERN, str(name)):
        raise ValueError(f"--name {name!r}: a model name is letters, digits, '_', '.' or '-' (the service's rule)")
    out = Path(run["out"])
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
    if run.get("threads") is not None and (type(run["threads"]) is not int or run["threads"] < 1):
        raise ValueError(f"--threads {run['threads']!r}: must be an integer >= 1")


def load_data(name: str, options: dict, data_dir: Path | None, features_out: Path | None = None) -> Dataset:
    if name == "videolog":
        log = videolog.simulate(videolog.VideoLogConfig(**options))
        if features_out is not None:
            for path in videolog.write_feature_tables(log, features_out):
                print(f"wrote {path}", file=sys.stderr)
        return videolog.to_dataset(log)
    if name == "synthetic":
        return synthetic.generate(synthetic.SyntheticConfig(**options))
    root = data_root(data_dir)
    if name == "census":
        return census.load(root / census.FILE, **options)
    if name == "kuairand":
        return kuairand.load(root / kuairand.DIRECTORY, **options)
    raise ValueError(f"unknown data set {name!r}; known: {DATA_SETS}")


def baseline_gain(path: Path, result) -> dict[str, dict[str, float]]:
    baseline = json.loads(path.read_text())
    gains = {}
    for split in ("validation", "test"):
        single = {k.split(".", 1)[1]: v for k, v in baseline.items() if k.startswith(f"{split}.")}
        gains[f"mtl_gain.{split}"] = mtl_gain(result.metrics[split], single)
    return gains


def main(argv: list[str] | None = None) -> int:
    from training.train import TrainingDiverged, check_loss_weights, run_parquet_training, run_training  # fast --help

    args = parse_args(argv)
    try:
        cfg = run_config.load(args.config, args.assignments, flag_overrides(args))
        cfg = run_config.merge(cfg, data_overrides(args, cfg["run"]["data"]))
        run = cfg["run"]
        if run["model"] not in FAMILIES:
            raise ValueError(f"unknown model family {run['model']!r}; known: {sorted(FAMILIES)}")
        model_config = config_with(run["model"], cfg["model"])
        train_config = run_config.train_config(cfg["train"])
        resolve_device(train_config.device)  # --device cuda without a GPU: say so before loading any data
        run_config.check_sections(cfg, DATA_SETS)
        check_data_options(run["data"], cfg["data"].get(run["data"], {}))
        tasks = data_tasks(run["data"], cfg["data"].get(run["data"], {}))
        check_loss_weights(train_config, tasks)
        check_outputs(run, args)
        if not args.allow_interface_change:  # another data set's model under this name: say so before training
            check_interface(Path(run["out"]) / (run["name"] or run["model"]), tasks_interface(tasks))
    except (ValueError, TypeError, OSError) as exc:
        print(f"ranker-train: {exc}", file=sys.stderr)
        return 2
    if run.get("threads"):
        torch.set_num_threads(int(run["threads"]))
    try:
        if run["data"] == "parquet":  # streams: the training split is never loaded whole
            options = dict(cfg["data"]["parquet"])  # with a path: data_tasks checked
            result = run_parquet_training(options.pop("path"), run["model"], train_config, model_config,
                                          log=lambda line: print(line, file=sys.stderr), **options)  # fmt: skip
        else:
            try:
                dataset = load_data(run["data"], cfg["data"].get(run["data"], {}), run.get("data_dir"),
                                    args.features_out if run["data"] == "videolog" else None)  # fmt: skip
            except (OSError, ValueError) as exc:  # a data folder or file missing, an option out of range
                print(f"ranker-train: cannot load --data {run['data']}: {exc}", file=sys.stderr)
                return 2
            result = run_training(dataset, run["model"], train_config, model_config,
                                  log=lambda line: print(line, file=sys.stderr))  # fmt: skip
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
        folder = write_version(result, Path(run["out"]), run["name"] or run["model"], args.allow_interface_change)
    except InterfaceChanged as exc:
        print(f"ranker-train: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
