"""The model.json contract: what training writes and the service reads.

Torch-free on purpose: training imports it to write a version folder, the service to check one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT_VERSION = 1
Finite = Annotated[float, Field(allow_inf_nan=False)]
# A model's name: its folder under models/ and the name requests use.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- video-length transforms f(video_len), shared by model.json defaults and requests ----


class _Transform(_Strict):
    # Strict types, as for every request field: "60" is not a number of seconds.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NoneTransform(_Transform):
    """f = 1: video length does not change the score."""

    kind: Literal["none"] = "none"


class LogTransform(_Transform):
    """f = log(1 + len / tau): grows slowly with length; tau in seconds."""

    kind: Literal["log"] = "log"
    tau: Finite = Field(60.0, gt=0)


class SigmoidTransform(_Transform):
    """f = 1 / (1 + exp(-(len - mu) / s)): a soft step around mu seconds."""

    kind: Literal["sigmoid"] = "sigmoid"
    mu: Finite = 30.0
    s: Finite = Field(15.0, gt=0)


class PowerTransform(_Transform):
    """f = len ** alpha; alpha < 0 favours short videos."""

    kind: Literal["power"] = "power"
    alpha: Finite = Field(0.3, ge=-5, le=5)


VideoLenTransform = Annotated[
    Union[NoneTransform, LogTransform, SigmoidTransform, PowerTransform],
    Field(discriminator="kind"),
]


# ---- features ----


class FeatureSpec(_Strict):
    """One raw feature and how it becomes a model input.

    sparse: a categorical value hashed (stable blake2b) into `buckets`, or looked up in
    `vocabulary`; id 0 is reserved for missing/unknown. dense: a number (clipped, optionally
    log1p-ed), then encoded as `encoding` says, with statistics fitted on the training data:
      standard:  one input, (x - mean) / std;
      bins:      one more sparse id, the quantile bin of x among `edges` (embedded like a category);
      piecewise: len(edges) - 1 inputs, the piecewise-linear encoding of Gorishniy et al.
                 (NeurIPS 2022): component t = clip((x - edges[t]) / (edges[t+1] - edges[t]), 0, 1).
    Trees split numbers at thresholds; the last two give a network the same kind of view.
    """

    name: str
    kind: Literal["sparse", "dense"]
    source: Literal["user", "item", "context"]
    buckets: int | None = Field(None, ge=2)
    vocabulary: list[str] | None = None
    default: str | Finite | None = None
    log1p: bool = False
    mean: Finite = 0.0
    std: Finite = Field(1.0, gt=0)
    clip_min: Finite | None = None  # applied before log1p; keeps log1p defined
    from_id: bool = False  # the raw value is the entity's own id (user.id, a candidate's id)
    encoding: Literal["standard", "bins", "piecewise"] = "standard"  # dense only
    edges: list[Finite] | None = None  # bins / piecewise: increasing, after clip and log1p

    @model_validator(mode="after")
    def _check(self) -> "FeatureSpec":
        if self.kind == "sparse" and (self.buckets is None) == (self.vocabulary is None):
            raise ValueError(f"sparse feature {self.name!r} needs exactly one of buckets, vocabulary")
        if self.kind == "dense" and not isinstance(self.default, (int, float)):
            raise ValueError(f"dense feature {self.name!r} needs a numeric default")
        if (self.encoding == "standard") != (self.edges is None) or (self.kind == "sparse" and self.edges):
            raise ValueError(f"feature {self.name!r}: edges go with a dense bins or piecewise encoding")
        if self.edges is not None and (len(self.edges) < 2 or any(a >= b for a, b in zip(self.edges, self.edges[1:]))):
            raise ValueError(f"feature {self.name!r}: edges must be at least two increasing numbers")
        return self

    @property
    def cardinality(self) -> int:
        """Number of embedding rows this feature needs (0 = missing/unknown included)."""
        if self.edges is not None:  # binned number: ids 1 .. len(edges) + 1 (below, between, above)
            return len(self.edges) + 2
        if self.vocabulary is not None:
            return len(self.vocabulary) + 1
        assert self.buckets is not None
        return self.buckets

    @property
    def width(self) -> int:
        """Columns this feature takes in the dense input (0 for sparse ids)."""
        if self.kind == "sparse" or self.encoding == "bins":
            return 0
        return len(self.edges) - 1 if self.encoding == "piecewise" else 1  # type: ignore[arg-type]


# ---- tasks and tensors ----


class TaskSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: Literal["binary", "regression"]
    label: str  # what the label means, for people
    sample_space: str = "all"  # "all" or the task whose positives define where this label exists
    output: str  # ONNX output tensor name
    value_range: tuple[float, float] | None = None


class TensorSpec(_Strict):
    name: str
    dtype: Literal["int64", "float32"]
    shape: list[int]  # -1 marks the dynamic batch axis


class ScoringDefaults(_Strict):
    weights: dict[str, Annotated[Finite, Field(ge=0)]]
    video_len_transform: VideoLenTransform = LogTransform()
    eps: float = Field(1e-6, gt=0, lt=1)


class DataSpec(_Strict):
    source: str
    description: str
    sha256: str
    rows: dict[str, int]
    seed: int | None = None
    options: dict = {}  # the loader's options (training.data.sets.load_data): the data can be loaded again
    split_seed: int | None = None  # the train/validation/test split's seed


class EngineSpeed(_Strict):
    """int8 against its float source on the machine that quantized it: one ONNX Runtime thread, p50 of
    one call on `rows` rows, the two alternated call by call."""

    rows: int
    calls: int
    fp32_p50_ms: float
    int8_p50_ms: float
    cpu: str  # what /proc/cpuinfo names; int8's gain depends on it


class Quantization(_Strict):
    """How an int8 version was made from its float source (ranker-quantize), and what it cost."""

    mode: Literal["dynamic", "static"]
    per_channel: bool
    source_version: int
    tolerance: dict[str, float]  # the largest loss allowed per task: auc (absolute), mse (relative)
    source_metrics: dict[str, dict[str, float]]  # the float version's, on the same rows
    speed: EngineSpeed | None = None  # absent in versions quantized before it was measured


class ModelSpec(_Strict):
    """Everything the service needs to use a model without the training code."""

    format_version: int = FORMAT_VERSION
    name: str
    version: int = Field(ge=1)
    family: str
    hyperparameters: dict
    tasks: list[TaskSpec] = Field(min_length=1)
    features: list[FeatureSpec] = Field(min_length=1)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    scoring: ScoringDefaults
    training_data: DataSpec
    metrics: dict[str, dict[str, float]]
    git_commit: str
    created_at: str
    onnx_sha256: str
    opset: int
    precision: Literal["fp32", "int8"] = "fp32"  # of model.onnx's weights
    quantization: Quantization | None = None  # int8 versions: how they were made

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        task_names = {t.name for t in self.tasks}
        unknown = set(self.scoring.weights) - task_names
        if unknown:
            raise ValueError(f"scoring weights name unknown tasks: {sorted(unknown)}")
        outputs = {o.name for o in self.outputs}
        missing = {t.output for t in self.tasks} - outputs
        if missing:
            raise ValueError(f"tasks refer to missing outputs: {sorted(missing)}")
        return self

    def interface(self) -> "Interface":
        """What a client relies on: the versions of one model name that may share traffic agree on it."""
        return Interface(
            tasks=frozenset((t.name, t.kind, t.output) for t in self.tasks),
            outputs=frozenset((o.name, o.dtype, tuple(o.shape)) for o in self.outputs),
            features=frozenset((f.name, f.kind, f.source) for f in self.features),
            inputs=frozenset((i.name, i.dtype, tuple(i.shape)) for i in self.inputs),
        )


@dataclass(frozen=True)
class Interface:
    """A model version's interface, as requests and clients see it.

    tasks: (name, kind, output tensor); outputs: (tensor name, dtype, shape); features: (name,
    kind, source), i.e. what a request or the feature store must provide; inputs: the tensors a
    KServe v2 client sends (their widths follow the features and their encodings). Fitted
    statistics, vocabularies, hash buckets, default weights and hyper-parameters are not part of
    it: a retrained model changes those and still serves the same requests. A part left None is not
    known yet (ranker-train knows the tasks before it reads any data) and is not compared.
    """

    tasks: frozenset[tuple[str, str, str]] | None = None
    outputs: frozenset[tuple[str, str, tuple[int, ...]]] | None = None
    features: frozenset[tuple[str, str, str]] | None = None
    inputs: frozenset[tuple[str, str, tuple[int, ...]]] | None = None

    def difference(self, other: "Interface") -> str | None:
        """None when the two agree on every part both know; else one line: what `other` changes."""
        changes = []
        for part, what in (("tasks", "task"), ("features", "feature"), ("outputs", "output"), ("inputs", "input")):
            mine, theirs = getattr(self, part), getattr(other, part)
            if mine is None or theirs is None or mine == theirs:
                continue
            gone, new = _describe(mine - theirs), _describe(theirs - mine)
            changes.append(f"{what}s " + "; ".join(x for x in (gone and f"without {gone}", new and f"with {new}") if x))
        return ", ".join(changes) or None


def tasks_interface(tasks: list[TaskSpec]) -> Interface:
    """The part of an interface known from the tasks alone (before any data is read)."""
    return Interface(tasks=frozenset((t.name, t.kind, t.output) for t in tasks))


def _describe(items: frozenset) -> str:
    # ("vtr", "binary", "vtr") -> "vtr (binary, vtr)": the name first, then what else defines it.
    shown = sorted(f"{item[0]} ({', '.join(map(str, item[1:]))})" for item in items)
    return ", ".join(shown[:6]) + (f" and {len(shown) - 6} more" if len(shown) > 6 else "")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

