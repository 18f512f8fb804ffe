"""A run's configuration, one pydantic model: defaults < a TOML file < `--set section.key=value` < flags.

A config file holds every hyper-parameter (see examples/train-census-ple.toml):
    [run]    data, model, out, name, threads, data_dir
    [train]  TrainConfig; [train.loss_w0] / [train.loss_gamma] per task of the chosen data
    [model]  fields of the chosen family's config (training/models/)
    [data.<name>]  the loader's options (training/data/sets.py; e.g. [data.videolog] n_impressions)
Every section is checked before any data is read; a bad value is one line naming it
(`train.epochs=0: Input should be greater than or equal to 1`).
"""

from __future__ import annotations

import copy
import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass

from contract.modelspec import NAME_PATTERN
from training.balancing import Balancing
from training.data.sets import DATA_SETS
from training.models import FAMILIES, config_with
from training.search_space import Choice, Float, Param, Space
from training.settings_types import STRICT, Count, NonNegative, Positive


@dataclass(config=STRICT)
class TrainConfig:
    """How a model is trained ([train])."""

    epochs: Count = 3
    batch_size: Count = 1024
    lr: NonNegative = 3e-3  # 0 is allowed: a run that only evaluates
    weight_decay: NonNegative = 0.0
    seed: Annotated[int, Field(ge=0)] = 0
    split_seed: Annotated[int, Field(ge=0)] | None = None  # None: the data set's own seed (its documented split)
    patience: Annotated[int, Field(ge=0)] = 0  # stop after this many epochs without a better validation loss; 0 = never
    progress: bool | None = None  # a tqdm bar per epoch; None = only on a terminal
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when torch sees a GPU
    loss_w0: dict[str, NonNegative] = Field(default_factory=dict)  # w_k0 per task (default 1)
    loss_gamma: dict[str, Positive] = Field(default_factory=dict)  # gamma_k per task (default 1)
    # False: the naive loss over every sample, labels outside a task's sample space counting as 0
    # (e.g. "no share" for an impression never clicked). Only for the ablation of reports/; the
    # validation loss and all metrics stay inside each task's own sample space.
    sample_space_loss: bool = True
    task_balancing: Balancing = "static"  # static (w_k0 * gamma_k^t) | uncertainty | pcgrad (training/balancing.py)
    # Which epoch is kept, and when to stop: "loss" is the w_k0-weighted sum of the validation task
    # losses, where a sparse task's small log loss barely counts; "normalized_loss" divides each
    # task's loss by that of always predicting its base rate (normalised entropy; for a regression,
    # the variance), so every task weighs the same whatever its positive rate.
    selection: Literal["loss", "normalized_loss"] = "loss"
    # How numbers enter the network (contract/features.py): "standard" (one standardised input),
    # "bins" (an embedded quantile bin) or "piecewise" (piecewise-linear over quantile bins).
    numeric_encoding: Literal["standard", "bins", "piecewise"] = "standard"
    numeric_bins: Annotated[int, Field(ge=2, le=256)] = 16
    # Keep an exponential moving average of the weights (this decay per step, e.g. 0.998) and judge,
    # keep and export it instead of the last step's weights; None: off.
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = None


# What ranker-tune searches for the recipe; per-task loss weights are added for the data set's tasks.
TRAIN_SEARCH: Space = {
    "lr": Float(3e-4, 1e-2, log=True),
    "batch_size": Choice((256, 512, 1024)),
    "weight_decay": Float(1e-6, 1e-1, log=True),
    "numeric_encoding": Choice(("standard", "bins", "piecewise")),
    "task_balancing": Choice(("static", "uncertainty")),
}
LOSS_WEIGHT_SEARCH: dict[str, Param] = {"loss_w0": Float(0.25, 4.0, log=True), "loss_gamma": Float(0.8, 1.0)}


class RunSection(BaseModel):
    """[run]: what to train on, which family, where the version goes."""

    model_config = ConfigDict(strict=True, extra="forbid")
    data: Literal[tuple(DATA_SETS)] = "videolog"  # type: ignore[valid-type]
    model: Literal[tuple(FAMILIES)] = "ple"  # type: ignore[valid-type]
    out: str = "models"
    name: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None  # default: the family's name
    threads: Count | None = None  # torch CPU threads (default: all cores)
    data_dir: str | None = None  # default $RANKER_DATA_DIR, else <repo>/../shared/data

    @property
    def version_name(self) -> str:
        return self.name or self.model


class RunConfig(BaseModel):
    """A whole run, checked: [run], [train], the family's [model] config and the data set's options.

    `tables` keeps the merged TOML tables it was made from (for writing a config back out)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)
    run: RunSection
    train: TrainConfig
    model: Any  # the chosen family's config dataclass
    data: Any  # the chosen data set's options dataclass
    tables: dict[str, Any]

    @classmethod
    def from_tables(cls, tables: dict[str, Any]) -> "RunConfig":
        """Check every section; ConfigError (one line naming the value) for the first bad one."""
        unknown = sorted(set(tables) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown section(s) {unknown}; sections are {sorted(DEFAULTS)}")
        unknown = sorted(set(tables["data"]) - set(DATA_SETS))
        if unknown:
            raise ConfigError(f"[data] names unknown data set(s) {unknown}; known: {sorted(DATA_SETS)}")
        run = checked("run", lambda: RunSection(**tables["run"]))
        train = checked("train", lambda: TrainConfig(**tables["train"]))
        model = checked("model", lambda: config_with(run.model, tables["model"]))
        entry = DATA_SETS[run.data]
        data = checked(f"data.{run.data}", lambda: entry.options(**tables["data"].get(run.data, {})))
        return cls(run=run, train=train, model=model, data=data, tables=copy.deepcopy(tables))


class ConfigError(ValueError):
    """A setting of the wrong type, range or name: one line, before any data is read."""


def checked(section: str, make):
    """make(), with a pydantic error turned into one line: `section.field=value: what is wrong`."""
    try:
        return make()
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join([section, *(str(p) for p in error["loc"])])
        value = f"={error['input']!r}" if error["type"] not in ("missing", "missing_argument") else ""
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{where}{value}: {error['msg']}{more}") from None
    except (TypeError, ValueError) as exc:  # an unknown name, said by config_with or a dataclass
        raise ConfigError(f"[{section}] {exc}") from None


DEFAULTS: dict[str, Any] = {"run": {}, "train": {}, "model": {}, "data": {}}


def merge(base: dict, update: dict) -> dict:
    """Deep merge: tables merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_assignment(text: str) -> dict:
    """'train.loss_gamma.ctr=0.9' -> {"train": {"loss_gamma": {"ctr": 0.9}}}; the value is TOML
    (numbers, true/false, [lists], "strings"); a bare word is taken as a string."""
    if "=" not in text:
        raise ConfigError(f"--set wants section.key=value, got {text!r}")
    path, raw = text.split("=", 1)
    keys = [k.strip() for k in path.split(".")]
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"--set wants section.key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    for key in reversed(keys):
        value = {key: value}
    return value  # type: ignore[return-value]


def load_tables(path: Path | None, assignments: list[str], flags: dict) -> dict:
    """The merged tables: defaults < the file < each --set < the flags (not yet checked)."""
    tables = copy.deepcopy(DEFAULTS)
    if path is not None:
        try:
            tables = merge(tables, tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"--config {path}: {exc}") from None
    for text in assignments:
        tables = merge(tables, parse_assignment(text))
    return merge(tables, flags)


def load(path: Path | None, assignments: list[str], flags: dict) -> RunConfig:
    return RunConfig.from_tables(load_tables(path, assignments, flags))


def to_toml(tables: dict) -> str:
    """A config as TOML text that `ranker-train --config` reads back (None values left out)."""
    import tomli_w

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value} has no TOML form")
        return value

    return tomli_w.dumps(clean(tables))
