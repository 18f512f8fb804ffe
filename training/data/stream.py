"""Parquet data sets that stream in chunks: the training split is never held in memory.

File layout: one column per raw feature, `label.<task>` (float32) and `mask.<task>` (bool) per
task, and the data set's schema (features, tasks, name, description, default weights) as JSON in
the file's metadata under `ple_ranker.dataset`. A label outside its task's sample space is never
read (NaN or null is fine); a NaN or null label inside it takes that row out of the task's space.
Any producer that writes this layout works; `write_parquet` writes it from a Dataset, and
`python -m training.data.stream OUT.parquet --impressions N` simulates a videolog into such a file.

Rows go to train / validation / test by a seeded hash of their row number, so the split does not
depend on the chunk size and needs no pass over the data. A first pass fits the dense features'
statistics on the training rows and keeps validation and test (capped by `max_eval_rows`) in
memory; every epoch then reads the file again, one chunk at a time, shuffling inside the chunk.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from contract.features import fit_dense, pre_standardise
from contract.modelspec import FeatureSpec, TaskSpec, sha256_file
from training.data import Dataset

META_KEY = b"ple_ranker.dataset"


def write_parquet(dataset: Dataset, path: Path, row_group_rows: int = 65_536) -> Path:
    """Write a Dataset in the streaming layout."""
    pq.write_table(_table(dataset), path, row_group_size=row_group_rows)
    return Path(path)


def _meta(dataset: Dataset) -> bytes:
    return json.dumps({
        "name": dataset.name, "description": dataset.description, "seed": dataset.seed,
        "features": [f.model_dump() for f in dataset.features], "tasks": [t.model_dump() for t in dataset.tasks],
        "default_weights": dataset.default_weights, "video_len_column": dataset.video_len_column,
        "split_fractions": list(dataset.split_fractions),
    }).encode()  # fmt: skip


def _table(dataset: Dataset) -> pa.Table:
    arrays = {name: pa.array(list(values) if values.dtype == object else values) for name, values in dataset.columns.items()}
    for k, task in enumerate(dataset.tasks):
        arrays[f"label.{task.name}"] = pa.array(dataset.labels[:, k].astype(np.float32))
        arrays[f"mask.{task.name}"] = pa.array(dataset.masks[:, k].astype(bool))
    return pa.table(arrays).replace_schema_metadata({META_KEY: _meta(dataset)})


def split_of(rows: np.ndarray, seed: int, fractions: tuple[float, float]) -> np.ndarray:
    """0 train, 1 validation, 2 test per row number, from a seeded splitmix64 hash (chunking-free)."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform in [0, 1)
    return np.where(u < fractions[0], 0, np.where(u < fractions[0] + fractions[1], 1, 2))


def concat(parts: list[Dataset], like: Dataset) -> Dataset:
    if not parts:
        return like.subset(np.arange(0))
    return dataclasses.replace(
        parts[0],
        columns={k: np.concatenate([p.columns[k] for p in parts]) for k in parts[0].columns},
        labels=np.concatenate([p.labels for p in parts]),
        masks=np.concatenate([p.masks for p in parts]),
    )


class ParquetStream:
    def __init__(self, path: Path, chunk_rows: int = 65_536, split_seed: int = 0, max_eval_rows: int = 200_000):
        self.path = Path(path)
        self.file = pq.ParquetFile(self.path)
        meta = json.loads(self.file.schema_arrow.metadata[META_KEY])
        self.features = [FeatureSpec(**f) for f in meta["features"]]
        self.tasks = [TaskSpec(**t) for t in meta["tasks"]]
        self.meta = meta
        self.chunk_rows, self.split_seed, self.max_eval_rows = chunk_rows, split_seed, max_eval_rows
        self.fractions = tuple(meta.get("split_fractions", (0.8, 0.1)))

    @property
    def n_rows(self) -> int:
        return self.file.metadata.num_rows

    def chunks(self) -> Iterator[tuple[np.ndarray, Dataset]]:
        """(split of each row, the chunk's rows as a Dataset), at most chunk_rows at a time."""
        start = 0
        for batch in self.file.iter_batches(batch_size=self.chunk_rows):
            n = batch.num_rows
            columns = {}
            for spec in self.features:
                column = batch.column(spec.name)
                columns[spec.name] = (column.to_numpy(zero_copy_only=False).astype(np.float64) if spec.kind == "dense"
                                      else np.array(column.to_pylist(), dtype=object))  # fmt: skip
            labels = np.stack([self._numpy(batch, f"label.{t.name}") for t in self.tasks], axis=1).astype(np.float32)
            masks = np.stack([self._numpy(batch, f"mask.{t.name}") for t in self.tasks], axis=1).astype(bool)
            masks &= ~np.isnan(labels)  # a NaN or null (-> NaN) label has no target: out of the task's space
            chunk = Dataset(name=self.meta["name"], description=self.meta["description"], features=self.features,
                            tasks=self.tasks, columns=columns, labels=labels, masks=masks,
                            seed=self.meta.get("seed"), default_weights=self.meta.get("default_weights", {}),
                            video_len_column=self.meta.get("video_len_column"))  # fmt: skip
            yield split_of(np.arange(start, start + n), self.split_seed, self.fractions), chunk
            start += n

    @staticmethod
    def _numpy(batch: pa.RecordBatch, name: str) -> np.ndarray:
        return batch.column(name).to_numpy(zero_copy_only=False)  # a copy where the column has nulls

    def prepare(self, encoding: str = "standard", bins: int = 16) -> tuple[list[FeatureSpec], Dataset, Dataset, int]:
        """One pass: dense statistics on the training rows; validation and test rows in memory.
        Quantile bins (encoding bins / piecewise) come from the first max_eval_rows training rows."""
        dense = [s for s in self.features if s.kind == "dense"]
        sums, squares = np.zeros(len(dense)), np.zeros(len(dense))
        sample: dict[str, list[np.ndarray]] = {s.name: [] for s in dense}
        n_train = 0
        held: dict[int, list[Dataset]] = {1: [], 2: []}
        held_rows = {1: 0, 2: 0}
        for split, chunk in self.chunks():
            train = split == 0
            n_train += int(train.sum())
            for j, spec in enumerate(dense):
                raw = chunk.columns[spec.name][train]
                x = pre_standardise(spec, np.where(np.isnan(raw), float(spec.default), raw))
                sums[j] += x.sum()
                squares[j] += (x * x).sum()
                if encoding != "standard" and n_train - int(train.sum()) < self.max_eval_rows:
                    sample[spec.name].append(raw)
            for part in (1, 2):
                index = np.flatnonzero(split == part)[: max(self.max_eval_rows - held_rows[part], 0)]
                if len(index):
                    held[part].append(chunk.subset(index))
                    held_rows[part] += len(index)
        mean = sums / max(n_train, 1)
        std = np.sqrt(np.maximum(squares / max(n_train, 1) - mean * mean, 0.0))
        fitted = {}
        for s, m, d in zip(dense, mean, std):
            if encoding != "standard":  # the bins from the sample; mean and std from the whole pass
                s = fit_dense(s, np.concatenate(sample[s.name]), encoding, bins)
            fitted[s.name] = s.model_copy(update={"mean": float(m), "std": float(d) if d > 1e-6 else 1.0})
        features = [fitted.get(s.name, s) for s in self.features]
        like = next(self.chunks())[1]
        return features, concat(held[1], like), concat(held[2], like), n_train

    def sha256(self) -> str:
        return sha256_file(self.path)


def main(argv: list[str] | None = None) -> int:
    """Simulate a videolog and write it in the streaming layout (row groups of --chunk rows)."""
    from training.data import videolog

    p = argparse.ArgumentParser(prog="python -m training.data.stream", description=main.__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--impressions", type=int, default=1_000_000)
    p.add_argument("--chunk", type=int, default=65_536, help="rows per Parquet row group")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--task-correlation", type=float, default=0.5)
    args = p.parse_args(argv)
    config = videolog.VideoLogConfig(n_impressions=args.impressions, seed=args.seed, task_correlation=args.task_correlation)
    write_parquet(videolog.to_dataset(videolog.simulate(config)), args.out, row_group_rows=args.chunk)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
