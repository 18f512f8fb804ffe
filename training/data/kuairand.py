"""KuaiRand (Gao et al., CIKM 2022): real Kuaishou impressions, five tasks, user features joined.

File: kuairand/kuairand_27k_liked_or_hated.tsv in the data folder (`data_root`; 41,828 impressions;
docs/data.md: selected to rows with an explicit like or hate, so engaged users; `bash
scripts/fetch-data.sh` downloads it); `sample=True` reads the committed 5,000-row sample in
datasets/samples/kuairand/ (with the user-feature rows it joins to) instead.
Tasks, all on every impression (exposures include autoplay, so views exist without a click):
  click (is_click), long_view, completion ratio play_time / duration clipped to [0, 1]
  (regression; masked where duration_ms is 0, unknown in 18.5 % of rows), share (is_forward),
  comment (is_comment).
Video length is duration_ms in seconds (missing where 0). Every column of user_features_pure.csv
is joined by user_id (all of the log's users are in it): ranges, flags and one-hot codes as
categorical features, the four counts as dense ones. Item features are the video id and its length:
the basic video table covers only 113 of the file's 9,359 videos, so it is not joined.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from contract.modelspec import FeatureSpec, TaskSpec
from training.data import SAMPLES, Dataset, data_root
from training.data.files import missing_message

DIRECTORY = Path("kuairand")
LOG_FILE = "kuairand_27k_liked_or_hated.tsv"
USER_FILE = "user_features_pure.csv"

USER_SPARSE = [
    "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
    "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range",
    *[f"onehot_feat{i}" for i in range(18)],
]  # fmt: skip
USER_DENSE = ["follow_user_num", "fans_user_num", "friend_user_num", "register_days"]
MAX_VOCABULARY = 64  # wider categorical features (onehot_feat3 has ~1,500 values) are hashed

TASKS = [
    TaskSpec(name="click", kind="binary", label="clicked (is_click)", output="click"),
    TaskSpec(name="long_view", kind="binary", label="long view (long_view)", output="long_view"),
    TaskSpec(name="completion", kind="regression", label="play time / duration in [0, 1]; masked where duration is 0",
             output="completion", value_range=(0.0, 1.0)),
    TaskSpec(name="share", kind="binary", label="shared (is_forward)", output="share"),
    TaskSpec(name="comment", kind="binary", label="commented (is_comment)", output="comment"),
]  # fmt: skip
DEFAULT_WEIGHTS = {"click": 1.0, "long_view": 1.0, "completion": 0.6, "share": 0.2, "comment": 0.1}


def _categorical(name: str, values: np.ndarray) -> FeatureSpec:
    distinct = {str(v) for v in values if v is not None}
    if len(distinct) <= MAX_VOCABULARY:
        # canonical() hashes/looks up 3.0 as "3": store the vocabulary the same way
        return FeatureSpec(name=name, kind="sparse", source="user", vocabulary=sorted(distinct))
    return FeatureSpec(name=name, kind="sparse", source="user", buckets=4096)


def _plain(values: pd.Series) -> np.ndarray:
    """Object array with None for missing and integral floats as ints (so 3.0 and 3 agree)."""
    out = values.to_numpy(object)
    return np.array([None if pd.isna(v) else (int(v) if isinstance(v, float) and v.is_integer() else v)
                     for v in out], dtype=object)  # fmt: skip


def load(directory: Path | None = None, nrows: int | None = None, sample: bool = False) -> Dataset:
    if not isinstance(sample, bool):
        raise ValueError(f"data.kuairand.sample={sample!r}: true or false")
    directory = SAMPLES / DIRECTORY if sample else directory or data_root() / DIRECTORY
    for name in (LOG_FILE, USER_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(missing_message(directory / name, "kuairand"))
    log = pd.read_csv(directory / LOG_FILE, sep="\t", nrows=nrows)
    users = pd.read_csv(directory / USER_FILE).set_index("user_id")
    joined = users.reindex(log["user_id"].to_numpy())  # users missing from the table: all NaN

    columns: dict[str, np.ndarray] = {
        "user_id": log["user_id"].to_numpy(object),
        "video_id": log["video_id"].to_numpy(object),
        "hour": (log["hourmin"] // 100).to_numpy(object),
    }
    features = [
        FeatureSpec(name="user_id", kind="sparse", source="user", buckets=8192, from_id=True),
        FeatureSpec(name="video_id", kind="sparse", source="item", buckets=16384, from_id=True),
        FeatureSpec(name="hour", kind="sparse", source="context", vocabulary=[str(h) for h in range(24)]),
    ]
    for name in USER_SPARSE:
        columns[name] = _plain(joined[name])
        features.append(_categorical(name, columns[name]))
    for name in USER_DENSE:
        columns[name] = joined[name].to_numpy(np.float64)
        features.append(FeatureSpec(name=name, kind="dense", source="user", default=0.0, log1p=True, clip_min=0.0))
    duration = log["duration_ms"].to_numpy(np.float64)
    columns["video_len"] = np.where(duration > 0, duration / 1000.0, np.nan)  # seconds; unknown -> default
    features.append(FeatureSpec(name="video_len", kind="dense", source="item", default=30.0, log1p=True, clip_min=0.0))

    has_duration = duration > 0
    completion = np.clip(log["play_time_ms"].to_numpy(np.float64) / np.where(has_duration, duration, 1.0), 0, 1)
    labels = np.stack([log["is_click"], log["long_view"], np.where(has_duration, completion, 0.0),
                       log["is_forward"], log["is_comment"]], axis=1).astype(np.float32)  # fmt: skip
    masks = np.ones(labels.shape, dtype=bool)
    masks[:, 2] = has_duration
    return Dataset(
        name="kuairand",
        description=(f"KuaiRand-27K {LOG_FILE}{' (the repository sample)' if sample else ''} ({len(log)} impressions) "
                     f"joined with {USER_FILE}"),
        features=features,
        tasks=TASKS,
        columns=columns,
        labels=labels,
        masks=masks,
        default_weights=DEFAULT_WEIGHTS,
        video_len_column="video_len",
    )
