"""The data sets `ranker-train --data NAME` knows, in one table, like the model families.

Each entry says what a run needs before any row is read (the tasks, the loader's options as a
checked dataclass) and how to load it. `parquet` streams (it is never loaded whole): its tasks come
from the file's metadata and training/train.py's `run_parquet_training` reads it.
"""

from __future__ import annotations

import dataclasses

import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

from pydantic.dataclasses import dataclass

from contract.modelspec import TaskSpec
from training.data import Dataset, census, data_root, kuairand, synthetic, videolog
from training.settings_types import STRICT, Count


@dataclass(frozen=True, config=STRICT)
class FileOptions:
    """[data.census] / [data.kuairand]: the files come from --data-dir / $RANKER_DATA_DIR."""

    nrows: Count | None = None  # read only the first rows (quick runs, tests)
    sample: bool = False  # the committed 5,000-row sample in datasets/samples/ instead (docs/data.md)


@dataclass(frozen=True, config=STRICT)
class ParquetOptions:
    """[data.parquet]: a file in the layout of training/data/stream.py."""

    path: str
    chunk_rows: Count = 65_536
    max_eval_rows: Count = 200_000


class DataSet(NamedTuple):
    options: type  # the loader's options (a dataclass that checks itself)
    tasks: Callable[[Any], list[TaskSpec]]  # known before any row is read
    load: Callable[[Any, Path | None, Path | None], Dataset] | None  # (options, data dir, features out)


def _videolog(options: videolog.VideoLogConfig, data_dir: Path | None, features_out: Path | None) -> Dataset:
    log = videolog.simulate(options)
    if features_out is not None:  # the user/item tables the service's feature store reads
        for path in videolog.write_feature_tables(log, features_out):
            print(f"wrote {path}", file=sys.stderr)
    return videolog.to_dataset(log)


def _parquet_tasks(options: ParquetOptions) -> list[TaskSpec]:
    from training.data.stream import ParquetStream

    return ParquetStream(options.path).tasks


DATA_SETS: dict[str, DataSet] = {
    "videolog": DataSet(videolog.VideoLogConfig, lambda _: videolog.TASKS, _videolog),
    "census": DataSet(FileOptions, lambda _: census.TASKS,
                      lambda o, root, _: census.load(data_root(root) / census.FILE, nrows=o.nrows, sample=o.sample)),
    "kuairand": DataSet(FileOptions, lambda _: kuairand.TASKS,
                        lambda o, root, _: kuairand.load(data_root(root) / kuairand.DIRECTORY, nrows=o.nrows,
                                                         sample=o.sample)),
    "synthetic": DataSet(synthetic.SyntheticConfig, lambda _: synthetic.TASKS, lambda o, *_: synthetic.generate(o)),
    "parquet": DataSet(ParquetOptions, _parquet_tasks, None),
}  # fmt: skip


def load_data(name: str, options: dict | Any, data_dir: Path | None = None, features_out: Path | None = None) -> Dataset:
    """Load an in-memory data set by name; `options` as the loader's dataclass or a plain dict."""
    entry = DATA_SETS[name]
    if entry.load is None:
        raise ValueError(f"--data {name} streams from its file; it is not loaded into memory")
    if isinstance(options, dict):
        options = entry.options(**options)
    dataset = entry.load(options, data_dir, features_out)
    recorded = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items() if v is not None}
    return dataclasses.replace(dataset, options=recorded)
