"""A seeded short-video log simulator: users, videos, impressions with multi-task labels.

Ground truth is a small latent model (user taste per category, video quality, length effects) so
that the tasks are correlated but not identical, as in a real feed:
  click (CTR)             on every impression
  long view (VTR)         only after a click; short videos are watched through more often
  completion ratio (VCR)  only after a click; play time / video length in [0, 1]
  share (SHR), comment (CMR)  only after a click; rare
The same seed gives the same tables and impressions, bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic.dataclasses import dataclass as pydantic_dataclass

from contract.modelspec import FeatureSpec, TaskSpec
from training.data import Dataset
from training.settings_types import STRICT

CATEGORIES = [
    "music", "comedy", "gaming", "food", "travel", "sports", "news", "beauty",
    "pets", "education", "tech", "dance", "film", "fashion", "cars", "diy",
]  # fmt: skip
AGE_BUCKETS = ["<18", "18-24", "25-34", "35-44", "45-54", "55+"]
GENDERS = ["f", "m", "u"]
CITY_TIERS = ["t1", "t2", "t3", "t4"]
DEVICES = ["android", "ios", "web"]
AUTHOR_TIERS = ["new", "rising", "established", "star"]
NETWORKS = ["wifi", "4g", "5g"]
HOURS = [str(h) for h in range(24)]

FEATURES = [
    FeatureSpec(name="user_id", kind="sparse", source="user", buckets=4096, from_id=True),
    FeatureSpec(name="age_bucket", kind="sparse", source="user", vocabulary=AGE_BUCKETS),
    FeatureSpec(name="gender", kind="sparse", source="user", vocabulary=GENDERS),
    FeatureSpec(name="city_tier", kind="sparse", source="user", vocabulary=CITY_TIERS),
    FeatureSpec(name="device", kind="sparse", source="user", vocabulary=DEVICES),
    FeatureSpec(name="user_watch_minutes", kind="dense", source="user", default=20.0, log1p=True, clip_min=0.0),
    FeatureSpec(name="video_id", kind="sparse", source="item", buckets=8192, from_id=True),
    FeatureSpec(name="category", kind="sparse", source="item", vocabulary=CATEGORIES),
    FeatureSpec(name="author_tier", kind="sparse", source="item", vocabulary=AUTHOR_TIERS),
    FeatureSpec(name="video_len", kind="dense", source="item", default=30.0, log1p=True, clip_min=0.0),
    FeatureSpec(name="video_age_days", kind="dense", source="item", default=7.0, log1p=True, clip_min=0.0),
    FeatureSpec(name="author_followers", kind="dense", source="item", default=1000.0, log1p=True, clip_min=0.0),
    FeatureSpec(name="network", kind="sparse", source="context", vocabulary=NETWORKS),
    FeatureSpec(name="hour", kind="sparse", source="context", vocabulary=HOURS),
]  # fmt: skip

TASKS = [
    TaskSpec(name="ctr", kind="binary", label="clicked the video", output="ctr"),
    TaskSpec(name="vtr", kind="binary", label="watched past 80% (long view), given a click",
             sample_space="ctr", output="vtr"),
    TaskSpec(name="vcr", kind="regression", label="play time / video length in [0, 1], given a click",
             sample_space="ctr", output="vcr", value_range=(0.0, 1.0)),
    TaskSpec(name="shr", kind="binary", label="shared the video, given a click", sample_space="ctr", output="shr"),
    TaskSpec(name="cmr", kind="binary", label="commented, given a click", sample_space="ctr", output="cmr"),
]  # fmt: skip

DEFAULT_WEIGHTS = {"ctr": 1.0, "vtr": 1.0, "vcr": 0.6, "shr": 0.2, "cmr": 0.1}


@pydantic_dataclass(frozen=True, config=STRICT)
class VideoLogConfig:
    """The generator's options ([data.videolog] in a run's config); checked when made."""

    n_users: int = 2000
    n_videos: int = 3000
    n_impressions: int = 200_000
    seed: int = 7
    # How strongly the tasks' unobserved per-impression engagement agrees, in [0, 1]: each task's
    # logit gets noise_scale * (sqrt(rho) * shared + sqrt(1 - rho) * own), so rho is the
    # correlation of that noise between any two tasks (0: independent, 1: one common factor).
    task_correlation: float = 0.5
    noise_scale: float = 1.0


@dataclass
class VideoLog:
    users: pd.DataFrame  # index user id ("u17"); user feature columns
    videos: pd.DataFrame  # index video id ("v42"); item feature columns
    impressions: pd.DataFrame  # user_id, video_id, context columns, labels
    config: VideoLogConfig
    world: World | None = None  # the ground truth behind the labels (simulate sets it)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class World:
    """The simulator's ground truth beyond the feature tables: what each user likes, how patient
    they are, and each video's category, author tier, length and hidden quality. `react` draws
    what users do with what they are shown, by the same equations as the simulated log."""

    users: pd.DataFrame
    videos: pd.DataFrame
    taste: np.ndarray  # (users, categories)
    patience: np.ndarray  # (users,)
    watch_minutes: np.ndarray  # (users,): activity, how often a user appears
    category: np.ndarray  # (videos,) index into CATEGORIES
    author: np.ndarray  # (videos,) index into AUTHOR_TIERS
    length: np.ndarray  # (videos,) seconds
    quality: np.ndarray  # (videos,)
    config: VideoLogConfig

    def react(self, u: np.ndarray, v: np.ndarray, network: np.ndarray, hour: np.ndarray,
              rng: np.random.Generator) -> dict[str, np.ndarray]:  # fmt: skip
        """Per impression (user index, video index, network index, hour): click, long_view, completion
        (NaN without a click), share, comment; the last three only after a click."""
        config, n_i = self.config, len(u)
        affinity = self.taste[u, self.category[v]]
        log_len = np.log(self.length[v])
        evening = ((hour >= 18) | (hour <= 1)).astype(float)
        quality, author = self.quality[v], self.author[v]

        rho = config.task_correlation
        if not 0.0 <= rho <= 1.0:
            raise ValueError("task_correlation must lie in [0, 1]")
        common = rng.standard_normal(n_i)

        def engagement() -> np.ndarray:  # (N,) this task's share of the correlated latent noise
            return config.noise_scale * (np.sqrt(rho) * common + np.sqrt(1.0 - rho) * rng.standard_normal(n_i))

        p_click = _sigmoid(engagement() - 1.6 + 0.8 * affinity + 0.6 * quality - 0.15 * (log_len - 3.4) ** 2
                           + 0.2 * evening - 0.2 * (network == 1))  # fmt: skip
        click = rng.random(n_i) < p_click
        completion_logit = (engagement() + 1.2 + 0.5 * affinity + 0.5 * quality + self.patience[u]
                            - 0.9 * (log_len - 3.0) + rng.normal(0, 0.6, n_i))  # fmt: skip
        vcr = _sigmoid(completion_logit)
        long_view = rng.random(n_i) < _sigmoid(4.0 * (vcr - 0.7) + 0.3 * affinity)
        share = rng.random(n_i) < _sigmoid(engagement() - 4.2 + 0.9 * affinity + 0.8 * quality + 1.0 * (vcr - 0.5))
        comment = rng.random(n_i) < _sigmoid(engagement() - 3.8 + 0.6 * quality + 0.4 * affinity + 0.3 * author)
        return {"click": click, "long_view": click & long_view, "completion": np.where(click, np.round(vcr, 4), np.nan),
                "share": click & share, "comment": click & comment}  # fmt: skip


def make_world(config: VideoLogConfig, rng: np.random.Generator) -> World:
    n_u, n_v, n_c = config.n_users, config.n_videos, len(CATEGORIES)

    # Users: demographics shift taste; activity drives how often they appear.
    age = rng.integers(0, len(AGE_BUCKETS), n_u)
    gender = rng.choice(len(GENDERS), n_u, p=[0.48, 0.47, 0.05])
    age_taste = rng.normal(0, 0.8, (len(AGE_BUCKETS), n_c))
    gender_taste = rng.normal(0, 0.5, (len(GENDERS), n_c))
    taste = age_taste[age] + gender_taste[gender] + rng.normal(0, 0.7, (n_u, n_c))
    patience = rng.normal(0, 0.6, n_u)  # how long a user keeps watching
    watch_minutes = rng.lognormal(3.0, 0.8, n_u)
    users = pd.DataFrame(
        {
            "age_bucket": np.array(AGE_BUCKETS)[age],
            "gender": np.array(GENDERS)[gender],
            "city_tier": rng.choice(CITY_TIERS, n_u, p=[0.2, 0.3, 0.3, 0.2]),
            "device": rng.choice(DEVICES, n_u, p=[0.6, 0.3, 0.1]),
            "user_watch_minutes": np.round(watch_minutes, 2),
        },
        index=pd.Index([f"u{i}" for i in range(n_u)], name="id"),
    )

    # Videos: category, author, length; a hidden quality.
    category = rng.integers(0, n_c, n_v)
    author = rng.choice(len(AUTHOR_TIERS), n_v, p=[0.4, 0.3, 0.2, 0.1])
    length = np.clip(rng.lognormal(3.4, 0.9, n_v), 3, 600)
    quality = rng.normal(0, 0.6, n_v) + 0.25 * author
    followers = np.round(10 ** (2 + author + rng.normal(0, 0.5, n_v)))
    videos = pd.DataFrame(
        {
            "category": np.array(CATEGORIES)[category],
            "author_tier": np.array(AUTHOR_TIERS)[author],
            "video_len": np.round(length, 1),
            "video_age_days": np.round(rng.exponential(10, n_v), 1),
            "author_followers": followers,
        },
        index=pd.Index([f"v{i}" for i in range(n_v)], name="id"),
    )
    return World(users, videos, taste, patience, watch_minutes, category, author, length, quality, config)


def simulate(config: VideoLogConfig = VideoLogConfig()) -> VideoLog:
    rng = np.random.default_rng(config.seed)
    world = make_world(config, rng)
    n_i = config.n_impressions

    # Impressions: active users and popular videos appear more often.
    u = rng.choice(config.n_users, n_i, p=world.watch_minutes / world.watch_minutes.sum())
    popularity = np.exp(world.quality) / np.exp(world.quality).sum()
    v = rng.choice(config.n_videos, n_i, p=popularity)
    network = rng.choice(len(NETWORKS), n_i, p=[0.6, 0.3, 0.1])
    hour = (rng.normal(20, 4, n_i).round().astype(int)) % 24
    labels = world.react(u, v, network, hour, rng)
    impressions = pd.DataFrame(
        {
            "user_id": world.users.index.values[u],
            "video_id": world.videos.index.values[v],
            "network": np.array(NETWORKS)[network],
            "hour": hour,
            **labels,
        }
    )
    return VideoLog(users=world.users, videos=world.videos, impressions=impressions, config=config, world=world)


def to_dataset(log: VideoLog) -> Dataset:
    """Join impressions with user and video features into raw columns + labels + masks."""
    imp = log.impressions
    users = log.users.loc[imp["user_id"]]
    videos = log.videos.loc[imp["video_id"]]
    columns: dict[str, np.ndarray] = {
        "user_id": imp["user_id"].to_numpy(object),
        "video_id": imp["video_id"].to_numpy(object),
        "network": imp["network"].to_numpy(object),
        "hour": imp["hour"].to_numpy(),
    }
    for spec in FEATURES:
        if spec.name in users.columns:
            columns[spec.name] = users[spec.name].to_numpy()
        elif spec.name in videos.columns:
            columns[spec.name] = videos[spec.name].to_numpy()
    clicked = imp["click"].to_numpy()
    labels = np.stack(
        [
            clicked,
            imp["long_view"].to_numpy(),
            np.nan_to_num(imp["completion"].to_numpy(float)),
            imp["share"].to_numpy(),
            imp["comment"].to_numpy(),
        ],
        axis=1,
    ).astype(np.float32)
    masks = np.stack([np.ones_like(clicked)] + [clicked] * 4, axis=1).astype(bool)
    cfg = log.config
    return Dataset(
        name="videolog",
        description=(
            f"simulated short-video log: {cfg.n_users} users, {cfg.n_videos} videos, "
            f"{cfg.n_impressions} impressions, task correlation {cfg.task_correlation} "
            f"(training.data.videolog, seed {cfg.seed})"
        ),
        features=FEATURES,
        tasks=TASKS,
        columns=columns,
        labels=labels,
        masks=masks,
        seed=cfg.seed,
        default_weights=DEFAULT_WEIGHTS,
        video_len_column="video_len",
    )


def write_feature_tables(log: VideoLog, directory: Path) -> list[Path]:
    """Write users.jsonl and items.jsonl ({"id": ..., "features": {...}} per line) for the store."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, table in (("users.jsonl", log.users), ("items.jsonl", log.videos)):
        path = directory / filename
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for row_id, row in zip(table.index, table.to_dict("records")):
                f.write(json.dumps({"id": row_id, "features": _plain(row)}) + "\n")
        tmp.replace(path)
        written.append(path)
    return written


def _plain(row: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
