"""One training run per (data set, model family, hyper-parameters, seed), cached as a JSON line.

Experiments describe their runs as `Run` values; `Runner.run` trains one with the package's own
`run_training` (the loop `ranker-train` uses) and appends its test/validation metrics, gate
utilisation and timing to `reports/data/<experiment>.jsonl`. A run already in that file is read
back instead of trained again, so an interrupted experiment resumes where it stopped and the
report can be rebuilt from the committed results without training.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

REPORTS = Path(__file__).resolve().parents[1] / "reports"


def _freeze(options: dict) -> tuple:
    """A dict as sorted (key, value) pairs; lists become tuples, tables (loss weights, a baseline's
    per-task settings) nested pairs, so a Run is hashable and compares by value."""
    return tuple(sorted((k, _freeze(v) if isinstance(v, dict) else tuple(v) if isinstance(v, list) else v)
                        for k, v in options.items()))  # fmt: skip


def _tables(pairs: tuple) -> dict:
    """_freeze undone: nested pairs back to dicts (a pair list whose items are all (str, x) pairs)."""
    def value(v):
        if isinstance(v, tuple) and v and all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str) for i in v):
            return _tables(v)
        return v

    return {k: value(v) for k, v in pairs}


@lru_cache(maxsize=2)
def baseline_splits(name: str, options: tuple):
    from training.baselines import Splits

    return Splits(load_dataset(name, options))


@dataclass(frozen=True)
class Run:
    data: str  # videolog | synthetic | census | kuairand
    family: str
    seed: int  # model initialisation and batch order (and the data, where the data set is generated)
    data_options: tuple = ()  # the loader's options, as sorted (key, value) pairs
    model: tuple = ()  # family config overrides
    train: tuple = ()  # TrainConfig overrides
    variant: str = ""  # a label for what an ablation changes (e.g. "naive loss")

    @classmethod
    def of(cls, data: str, family: str, seed: int, *, data_options: dict | None = None, model: dict | None = None,
           train: dict | None = None, variant: str = "") -> "Run":  # fmt: skip
        return cls(data, family, seed, _freeze(data_options or {}), _freeze(model or {}), _freeze(train or {}), variant)

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class Outcome:
    run: Run
    test: dict[str, dict[str, float]]  # task -> {"auc" or "mse": value}
    validation: dict[str, dict[str, float]]
    gates: dict[str, dict[str, float]]
    seconds: float
    epochs: int
    parameters: int
    hardware: str = ""  # what trained it: the CPU's or the GPU's name ("" in rows kept before it was recorded)

    def metric(self, task: str) -> float:
        """The task's test AUC (binary) or MSE; NaN where the split had one class only (a tiny sample)."""
        m = self.test[task]
        return m.get("auc", m.get("mse", float("nan")))


@lru_cache(maxsize=4)
def load_dataset(name: str, options: tuple):
    from training.data.sets import load_data

    return load_data(name, dict(options), None)


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": None,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def execute(run: Run) -> Outcome:
    """Train (or fit, for a baseline) one run and score it on its test split."""
    start = time.perf_counter()
    if run.family in ("lightgbm", "logistic"):  # one model per task (training/baselines.py)
        metrics = baseline_splits(run.data, run.data_options).evaluate(run.family, _tables(run.model), run.seed)
        return Outcome(run, _headline(metrics["test"]), _headline(metrics["validation"]), {},
                       round(time.perf_counter() - start, 2), 0, 0, cpu_model())  # fmt: skip
    from training.distributed import resolve_device
    from training.models import config_with
    from training.train import TrainConfig, run_training

    dataset = load_dataset(run.data, run.data_options)
    config = TrainConfig(**_tables(run.train), seed=run.seed, progress=False)
    device = resolve_device(config.device)
    result = run_training(dataset, run.family, config, config_with(run.family, _tables(run.model)), log=lambda _: None)
    return Outcome(
        run=run,
        test=_headline(result.metrics["test"]),
        validation=_headline(result.metrics["validation"]),
        gates=result.gates,
        seconds=round(time.perf_counter() - start, 2),
        epochs=len(result.history),
        parameters=sum(p.numel() for p in result.model.parameters()),
        hardware=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
    )


@dataclass
class Runner:
    experiment: str
    directory: Path = REPORTS
    log: Callable[[str], None] = print
    jobs: int = 1  # runs trained at once by prefetch(), each in its own process
    _done: dict[str, Outcome] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Every experiment's results are read: the same run asked for by two experiments trains once.
        for path in sorted((self.directory / "data").glob("*.jsonl")):
            for line in path.read_text().splitlines():
                row = json.loads(line)
                run = Run(**{k: _thaw(v) if k in ("data_options", "model", "train") else v for k, v in row["run"].items()})
                self._done[run.key()] = Outcome(run=run, **{k: v for k, v in row.items() if k != "run"})

    @property
    def path(self) -> Path:
        return self.directory / "data" / f"{self.experiment}.jsonl"

    def run(self, run: Run) -> Outcome:
        if run.key() not in self._done:
            self._record(execute(run))
        return self._done[run.key()]

    def prefetch(self, runs: Iterable[Run]) -> None:
        """Train every run not done yet, `jobs` at a time in worker processes (spawned: no state of
        this one is shared; each uses this process's torch thread count). The results, and so the
        report, are what `run` would give one by one; only the order they finish in differs."""
        todo = list({r.key(): r for r in runs if r.key() not in self._done}.values())
        if self.jobs <= 1 or len(todo) <= 1:
            for r in todo:
                self.run(r)
            return
        context = multiprocessing.get_context("spawn")  # never fork a process that holds torch's thread pools
        with ProcessPoolExecutor(min(self.jobs, len(todo)), mp_context=context, initializer=torch.set_num_threads,
                                 initargs=(torch.get_num_threads(),)) as pool:  # fmt: skip
            for future in as_completed([pool.submit(execute, r) for r in todo]):
                self._record(future.result())

    def _record(self, outcome: Outcome) -> None:
        self._done[outcome.run.key()] = outcome
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._save(outcome)

    def _save(self, outcome: Outcome) -> None:
        run = outcome.run
        with self.path.open("a") as f:
            f.write(json.dumps({"run": asdict(run)} | {k: v for k, v in asdict(outcome).items() if k != "run"}) + "\n")
        shown = " ".join(f"{t}={outcome.metric(t):.4f}" for t in outcome.test)
        self.log(f"[{self.experiment}] {run.data} {run.family} {run.variant} seed {run.seed}: {shown} ({outcome.seconds:.0f} s)")

    def run_all(self, runs: Iterable[Run]) -> list[Outcome]:
        return [self.run(r) for r in runs]


def _thaw(value):
    """What _freeze made, back from JSON (which wrote every tuple as a list)."""
    return tuple(_thaw(v) for v in value) if isinstance(value, list) else value


def _headline(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {t: {k: v for k, v in m.items() if k in ("auc", "mse")} for t, m in metrics.items()}


# --- aggregation over seeds -------------------------------------------------------------------


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    a = np.asarray(list(values), dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def gain(outcome: Outcome, single: Outcome, task: str) -> float:
    """The PLE paper's Eq. 11 for one task: positive when the multi-task model beats single-task."""
    m, s = outcome.test[task], single.test[task]
    return m["auc"] - s["auc"] if "auc" in m else s["mse"] - m["mse"]


def paired_gains(outcomes: list[Outcome], singles: list[Outcome], task: str) -> list[float]:
    """Eq. 11 per seed, each multi-task run against the single-task run of the same seed (and data)."""
    by_seed = {(s.run.seed, s.run.data_options): s for s in singles}
    return [gain(o, by_seed[(o.run.seed, o.run.data_options)], task) for o in outcomes]
