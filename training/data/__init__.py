"""Data sets as the trainer sees them: raw feature columns, labels and per-task sample-space masks."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import numpy as np

from contract.modelspec import FeatureSpec, TaskSpec
from training.data.files import DATA_DIR_ENV, SAMPLES, data_root  # noqa: F401  (the data folder's rule lives there)


@dataclass
class Dataset:
    """N rows of raw features with K task labels.

    columns: feature name -> (N,) raw values (strings, ints, floats, None for missing), exactly
             what the service would receive, so training encodes them with the service's transform.
    labels:  (N, K) float32; only meaningful where `masks` is True.
    masks:   (N, K) bool; True where the row is inside the task's sample space (e.g. share only
             exists after a click).
    """

    name: str
    description: str
    features: list[FeatureSpec]
    tasks: list[TaskSpec]
    columns: dict[str, np.ndarray]
    labels: np.ndarray
    masks: np.ndarray
    seed: int | None = None
    default_weights: dict[str, float] = field(default_factory=dict)
    video_len_column: str | None = None
    split_fractions: tuple[float, float] = (0.8, 0.1)  # train, validation; the rest is test
    stratify: bool = False  # split each combination of the binary labels separately
    # For data that is not all in memory (a streamed Parquet file): the source's sha256 and rows.
    fingerprint: str | None = None
    source_rows: int | None = None
    options: dict = field(default_factory=dict)  # the loader's options (load_data): enough to load it again

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> "Dataset":
        return dataclasses.replace(
            self,
            columns={k: v[index] for k, v in self.columns.items()},
            labels=self.labels[index],
            masks=self.masks[index],
        )

    def split(self, fractions: tuple[float, float] | None = None, seed: int = 0):
        """Seeded train / validation / test split (the rest after the two fractions is test).

        With `stratify`, every combination of the binary labels is split in the same proportions,
        so rare positives are spread evenly over the three parts.
        """
        fractions = fractions or self.split_fractions
        rng = np.random.default_rng(seed)
        groups = [np.arange(len(self))]
        if self.stratify:
            binary = [k for k, t in enumerate(self.tasks) if t.kind == "binary"]
            code = ((self.labels[:, binary] > 0.5) & self.masks[:, binary]) @ (1 << np.arange(len(binary)))
            groups = [np.flatnonzero(code == c) for c in np.unique(code)]
        parts: list[list[np.ndarray]] = [[], [], []]
        for group in groups:
            order = rng.permutation(group)
            n_train = int(round(fractions[0] * len(order)))
            n_val = int(round(fractions[1] * len(order)))
            for part, index in zip(parts, np.split(order, [n_train, n_train + n_val])):
                part.append(index)
        return tuple(self.subset(rng.permutation(np.concatenate(p))) for p in parts)

    def sha256(self) -> str:
        """Fingerprint of the rows (features, labels, masks) for model.json."""
        if self.fingerprint:
            return self.fingerprint
        digest = hashlib.sha256()
        for name in sorted(self.columns):
            digest.update(name.encode())
            digest.update("\x1f".join(map(str, self.columns[name].tolist())).encode())
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        digest.update(np.ascontiguousarray(self.masks).tobytes())
        return digest.hexdigest()
