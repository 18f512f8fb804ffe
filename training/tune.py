"""ranker-tune: search a family's hyper-parameters with Optuna; write the best as a ranker-train config.

    ranker-tune --data census --model ple --trials 30 [--storage URL] [--study NAME] [--out best.toml]
                [--config base.toml] [--set section.key=value ...] [--data-dir DIR] [--threads N]

Every trial is one `run_training` of the family on the data set's split, with the base
configuration (defaults < --config < --set) and values sampled (TPE) from the search spaces
declared beside the configs: the recipe (training/config.py TRAIN_SEARCH, and w_k0 / gamma_k per
task), the sizes every family has (training/models/parts.py BASE_SEARCH) and the family's own
(training/models/); what the base configuration sets is pinned, not searched. A trial's score is its kept epoch's validation loss, each task's divided by
that of predicting its base rate (`val_normalized_loss`: every task weighs the same, and loss
weights cannot game it); after each epoch the running score is reported and a poor trial is
pruned (median rule). `--model lightgbm` or `logistic` tunes those baselines instead
(training/baselines.py), one study per task, with the same number of trials.

The study lives in Optuna's storage: a SQLite file by default (`tuning/<study>.db`), resumable
after Ctrl-C (`--trials` is the total the study should reach); a PostgreSQL URL
(`postgresql://host/db`) lets several processes or machines work on one study at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import optuna

from training import config as run_config
from training.config import LOSS_WEIGHT_SEARCH, TRAIN_SEARCH, ConfigError, RunConfig
from training.data.sets import DATA_SETS, load_data
from training.models import FAMILIES
from training.models.parts import BASE_SEARCH
from training.search_space import sample, suggest

BASELINES = ("lightgbm", "logistic")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ranker-tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=sorted(DATA_SETS), required=True)
    p.add_argument("--model", choices=sorted(FAMILIES) + list(BASELINES), required=True)
    p.add_argument("--trials", type=int, required=True, help="trials the study should have in all (resumes)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///tuning/<study>.db)")
    p.add_argument("--study", default=None, help="study name (default <data>-<model>)")
    p.add_argument("--out", type=Path, default=None, help="best configuration as TOML (default tuning/<study>.toml)")
    p.add_argument("--config", type=Path, default=None, help="base configuration (as ranker-train's --config)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="assignments")
    p.add_argument("--data-dir", default=None, help="shared data sets (as ranker-train's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per trial")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.trials < 1:
        p.error("--trials must be >= 1")
    return args


def base_tables(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {"run": {"data": args.data}}
    if args.model not in BASELINES:
        flags["run"]["model"] = args.model
    if args.data_dir:
        flags["run"]["data_dir"] = args.data_dir
    tables = run_config.load_tables(args.config, args.assignments, flags)
    tables["train"].setdefault("progress", False)
    return tables


def trial_tables(trial: optuna.Trial, base: dict[str, Any], family: str, task_names: list[str]) -> dict[str, Any]:
    """The base tables with this trial's values: the recipe, per-task weights, the model's sizes.
    A value the base configuration sets (--config, --set) is pinned: it is not searched."""
    train = sample(trial, "train", unpinned(TRAIN_SEARCH, base["train"]))
    for table, param in LOSS_WEIGHT_SEARCH.items():
        pinned = base["train"].get(table, {})
        train[table] = {task: suggest(trial, f"train.{table}.{task}", param) for task in task_names if task not in pinned}
    model = sample(trial, "model", unpinned({**BASE_SEARCH, **FAMILIES[family].search}, base["model"]))
    return run_config.merge(base, {"train": train, "model": model})


def unpinned(space: dict, pinned: dict) -> dict:
    return {name: param for name, param in space.items() if name not in pinned}


class Pruned(Exception):
    """Raised from the epoch hook; becomes optuna.TrialPruned outside the training loop."""


def network_objective(cfg0: RunConfig, dataset):
    from training.train import TrainingDiverged, run_training

    task_names = [t.name for t in dataset.tasks]

    def objective(trial: optuna.Trial) -> float:
        cfg = RunConfig.from_tables(trial_tables(trial, cfg0.tables, cfg0.run.model, task_names))
        trial.set_user_attr("tables", cfg.tables)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # several may share a study

        def report(epoch: int, row: dict) -> None:
            stop_if_interrupted()
            trial.report(row["val_normalized_loss"], epoch)
            if trial.should_prune():
                raise Pruned

        try:
            result = run_training(dataset, cfg.run.model, cfg.train, cfg.model, log=lambda _: None, on_epoch=report)
        except Pruned:
            raise optuna.TrialPruned() from None
        except TrainingDiverged:
            raise optuna.TrialPruned() from None  # a learning rate too high for these sizes
        best = result.history[result.best_epoch]
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("validation", result.metrics["validation"])
        return best["val_normalized_loss"]

    return objective


# Ctrl-C asks the study to stop; the KeyboardInterrupt is raised at the next epoch or trial end, in
# plain code. Raised by the signal handler itself it could land inside a finaliser (a tensor's, a
# database connection's), where Python prints and drops it, and the study ran on (seen in CI).
INTERRUPTED = threading.Event()


def _on_sigint(signum, frame) -> None:
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt  # a second Ctrl-C: now
    INTERRUPTED.set()


def stop_if_interrupted(*_) -> None:
    """Raise KeyboardInterrupt once Ctrl-C was pressed (an epoch hook and an Optuna callback)."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


def run_study(name: str, storage: str, objective, trials: int, seed: int, progress: bool) -> optuna.Study:
    """Optimise until the study holds `trials` finished trials (counting earlier runs and other workers)."""
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(8, trials)),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2))  # fmt: skip
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    if done < trials:
        study.optimize(objective, n_trials=trials - done, show_progress_bar=progress,
                       callbacks=[optuna.study.MaxTrialsCallback(trials, states=FINISHED),
                                  stop_if_interrupted])  # fmt: skip
    return study


def default_storage(study: str) -> str:
    Path("tuning").mkdir(exist_ok=True)
    return f"sqlite:///tuning/{study}.db"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    study_name = args.study or f"{args.data}-{args.model}"
    storage = args.storage or default_storage(study_name)
    out = args.out or Path("tuning") / f"{study_name}.toml"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        base = base_tables(args)
        cfg0 = RunConfig.from_tables(base)
        out.parent.mkdir(parents=True, exist_ok=True)
    except (ConfigError, OSError) as exc:
        print(f"ranker-tune: {exc}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        dataset = load_data(cfg0.run.data, cfg0.data, cfg0.run.data_dir)
    except (OSError, ValueError) as exc:
        print(f"ranker-tune: cannot load --data {cfg0.run.data}: {exc}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        if args.model in BASELINES:
            from training.baselines import tune_baseline

            tables = tune_baseline(args.model, dataset, cfg0, study_name, storage, args.trials, args.seed, progress)
        else:
            study = run_study(study_name, storage, network_objective(cfg0, dataset), args.trials, args.seed, progress)
            best = study.best_trial
            tables = best.user_attrs["tables"]
            print(f"best of {len(study.trials)} trials: #{best.number}, validation normalised loss {best.value:.5f}",
                  file=sys.stderr)  # fmt: skip
    except KeyboardInterrupt:  # the finished trials are in the storage; the same command resumes
        print(f"ranker-tune: interrupted; the study {study_name!r} keeps its finished trials in {storage}: "
              "run the same command to go on", file=sys.stderr)  # fmt: skip
        return 130
    out.write_text(f"# ranker-tune --data {args.data} --model {args.model} --trials {args.trials}: study "
                   f"{study_name!r}\n" + run_config.to_toml(tables))  # fmt: skip
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
