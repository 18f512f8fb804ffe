"""Data sets as the trainer sees them: raw feature columns, labels and per-task sample-space masks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from service.modelspec import FeatureSpec, TaskSpec


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

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> "Dataset":
        return Dataset(
            name=self.name,
            description=self.description,
            features=self.features,
            tasks=self.tasks,
            columns={k: v[index] for k, v in self.columns.items()},
            labels=self.labels[index],
            masks=self.masks[index],
            seed=self.seed,
            default_weights=self.default_weights,
            video_len_column=self.video_len_column,
        )

    def split(self, fractions: tuple[float, float] = (0.8, 0.1), seed: int = 0):
        """Random train / validation / test split (the rest after the two fractions is test)."""
        order = np.random.default_rng(seed).permutation(len(self))
        n_train = int(fractions[0] * len(self))
        n_val = int(fractions[1] * len(self))
        return (
            self.subset(order[:n_train]),
            self.subset(order[n_train : n_train + n_val]),
            self.subset(order[n_train + n_val :]),
        )

    def sha256(self) -> str:
        """Fingerprint of the rows (features, labels, masks) for model.json."""
        digest = hashlib.sha256()
        for name in sorted(self.columns):
            digest.update(name.encode())
            digest.update("\x1f".join(map(str, self.columns[name].tolist())).encode())
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        digest.update(np.ascontiguousarray(self.masks).tobytes())
        return digest.hexdigest()

    def positives(self) -> dict[str, int]:
        return {
            t.name: int(((self.labels[:, k] > 0.5) & self.masks[:, k]).sum())
            for k, t in enumerate(self.tasks)
            if t.kind == "binary"
        }
