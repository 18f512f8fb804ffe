"""Run configuration: defaults < a TOML file < `--set section.key=value` < explicit flags.

A config file holds every hyper-parameter (see examples/train-census-ple.toml):
    [run]    data, model, out, name, threads, data_dir
    [train]  TrainConfig fields; [train.loss_w0] / [train.loss_gamma] per task of the chosen data
    [model]  fields of the chosen family's config dataclass (training/models/)
    [data.<name>]  the loader's options (e.g. [data.videolog] n_impressions, task_correlation)
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from training.train import TrainConfig

DEFAULTS: dict[str, Any] = {
    "run": {"data": "videolog", "model": "ple", "out": "models", "name": None, "threads": None, "data_dir": None},
    "train": {},
    "model": {},
    "data": {},
}


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
        raise ValueError(f"--set wants section.key=value, got {text!r}")
    path, raw = text.split("=", 1)
    keys = [k.strip() for k in path.split(".")]
    if len(keys) < 2 or not all(keys):
        raise ValueError(f"--set wants section.key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    for key in reversed(keys):
        value = {key: value}
    return value  # type: ignore[return-value]


def load(path: Path | None, assignments: list[str], flags: dict) -> dict:
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        config = merge(config, tomllib.loads(Path(path).read_text()))
    for text in assignments:
        config = merge(config, parse_assignment(text))
    return merge(config, flags)


def train_config(section: dict) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(section) - names
    if unknown:
        raise ValueError(f"[train] has no field(s) {sorted(unknown)}; it has {sorted(names)}")
    return TrainConfig(**section)


def check_sections(config: dict, data_sets: tuple[str, ...] | list[str]) -> None:
    """ValueError for a section, [run] key or data set nobody reads (a typo would otherwise be ignored)."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; sections are {sorted(DEFAULTS)}")
    unknown = sorted(set(config["run"]) - set(DEFAULTS["run"]))
    if unknown:
        raise ValueError(f"[run] has no key(s) {unknown}; it has {sorted(set(DEFAULTS['run']))}")
    unknown = sorted(set(config["data"]) - set(data_sets))
    if unknown:
        raise ValueError(f"[data] names unknown data set(s) {unknown}; known: {sorted(data_sets)}")
