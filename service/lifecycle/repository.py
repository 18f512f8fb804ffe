"""The model repository on disk: models/<name>/<version>/ folders, and one version loaded from one.

One path loads the first version and every later one: read and check model.json, verify
model.onnx's sha256, open the ONNX Runtime session, check its tensors against model.json and warm
it up. A version that fails anywhere raises LoadError with the reason; nothing of it is kept.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from contract.features import FeatureTransform
from contract.modelspec import NAME_PATTERN, ModelSpec, sha256_file
from service.lifecycle.engine import InferenceEngine
from service.observability.metrics import Metrics
from service.problems import InvalidInput
from service.settings import Settings

log = logging.getLogger("ranker.registry")

try:  # glibc only; elsewhere release_memory() just collects garbage
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):
    _LIBC = None

_NAME = re.compile(NAME_PATTERN)
_ORT_DTYPES = {"int64": "tensor(int64)", "float32": "tensor(float)"}


class LoadError(Exception):
    pass


@dataclass(eq=False)  # one loaded version is one object: hashable by identity, so caches can key by it
class ModelVersion:
    """A loaded, checked and warmed-up version: everything a request needs."""

    name: str
    version: int
    path: Path
    spec: ModelSpec
    engine: InferenceEngine
    transform: FeatureTransform
    load_seconds: float


class VersionState(StrEnum):
    LOADING = "loading"
    READY = "ready"  # loaded, checked and warmed up: can take traffic
    FAILED = "failed"  # with its reason; retried when the folder changes


@dataclass
class VersionEntry:
    """What the registry knows of one version folder."""

    name: str
    version: int
    state: VersionState
    handle: ModelVersion | None = None
    reason: str | None = None
    signature: tuple = ()
    since: float = field(default_factory=time.time)


def check_tensors(spec: ModelSpec, engine: InferenceEngine) -> None:
    """The session's inputs and outputs must be exactly what model.json declares."""
    session_inputs = {i.name: i.type for i in engine.session.get_inputs()}
    declared_inputs = {t.name: _ORT_DTYPES[t.dtype] for t in spec.inputs}
    if session_inputs != declared_inputs:
        raise LoadError(f"model.onnx inputs {session_inputs} differ from model.json {declared_inputs}")
    session_outputs = {o.name: o.type for o in engine.session.get_outputs()}
    for t in spec.outputs:
        if session_outputs.get(t.name) != _ORT_DTYPES[t.dtype]:
            raise LoadError(f"model.onnx lacks output {t.name!r} of {t.dtype} (has {session_outputs})")
    widths = {t.name: t.shape[-1] for t in spec.inputs}
    for i in engine.session.get_inputs():
        if isinstance(i.shape[-1], int) and i.shape[-1] != widths[i.name]:
            raise LoadError(f"input {i.name!r} has width {i.shape[-1]}, model.json says {widths[i.name]}")


def load_version(path: Path, settings: Settings) -> ModelVersion:
    start = time.perf_counter()
    try:
        spec = ModelSpec.model_validate_json((path / "model.json").read_bytes())
    except FileNotFoundError:
        raise LoadError("model.json is missing") from None
    except ValueError as exc:
        raise LoadError(f"model.json does not check out: {exc}") from None
    if spec.name != path.parent.name or str(spec.version) != path.name:
        raise LoadError(f"model.json names {spec.name}/{spec.version}, the folder is {path.parent.name}/{path.name}")
    transform = FeatureTransform(spec.features)
    if [t.model_dump() for t in spec.inputs] != [t.model_dump() for t in transform.input_specs()]:
        raise LoadError("model.json's inputs do not match its feature schema")
    onnx_path = path / "model.onnx"
    if not onnx_path.is_file():
        raise LoadError("model.onnx is missing")
    if sha256_file(onnx_path) != spec.onnx_sha256:
        raise LoadError("model.onnx does not match the sha256 in model.json")
    try:
        engine = InferenceEngine(
            str(onnx_path),
            device=settings.device,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            batch_buckets=settings.batch_buckets,
            io_binding=settings.io_binding,
            cuda_graph=settings.cuda_graph,
            adaptive_threads=settings.adaptive_threads,
            wide_call_min_rows=settings.wide_call_min_rows,
        )
    except Exception as exc:  # ORT raises several types for a broken graph
        raise LoadError(f"ONNX Runtime cannot open model.onnx: {exc}") from None
    check_tensors(spec, engine)
    try:
        engine.warm_up(transform.encode(1).as_inputs(), engine.buckets)
    except Exception as exc:
        raise LoadError(f"warm-up inference failed: {exc}") from None
    return ModelVersion(spec.name, spec.version, path, spec, engine, transform, time.perf_counter() - start)


def release_memory() -> None:
    """Hand freed memory back to the OS after a session is dropped.

    ONNX Runtime sessions are freed, but glibc keeps the pages in per-thread arenas; over many
    swaps on a threaded server that shows as RSS creeping up. malloc_trim returns what it can.
    """
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def folder_signature(path: Path) -> tuple:
    """Changes when files in the folder change (a copy in progress, a replaced file)."""
    try:
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir()))
    except OSError:
        return ()


class Repository:
    """The folders under the models directory: names, versions, paths that stay inside it, and the
    interface each version's model.json declares. An unreadable directory is logged once, counted
    on every scan, and reads as empty: what is loaded keeps serving."""

    def __init__(self, root: Path, metrics: Metrics):
        self.root = root
        self.metrics = metrics
        self._unreadable = False  # the models directory failed its last scan (logged once)

    def model_names(self) -> list[str]:
        try:
            names = sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))
        except OSError as exc:
            self.metrics.repository_events.labels("unreadable").inc()  # every failed scan
            if not self._unreadable:  # the log line once, not every poll
                log.error("models directory %s unreadable: %s; what is loaded keeps serving", self.root, exc)
            self._unreadable = True
            return []
        if self._unreadable:
            log.info("models directory %s readable again", self.root)
            self._unreadable = False
        return names

    def versions(self, name: str) -> list[int]:
        try:
            return sorted(int(p.name) for p in (self.root / name).iterdir() if p.is_dir() and p.name.isdigit())
        except OSError:
            return []

    def path(self, name: str, version: int) -> Path:
        """The folder of a version, refusing names and links that lead out of the repository."""
        if not _NAME.match(name) or version < 1:
            raise InvalidInput("invalid_name", "model names are letters, digits, '_', '.', '-'", "name")
        path = self.root / name / str(version)
        try:
            inside = path.resolve().is_relative_to(self.root.resolve())
        except OSError:
            inside = False
        if not inside:
            raise InvalidInput("outside_repository", f"{name}/{version} leads outside the model repository", "name")
        return path

    def interfaces(self, name: str, versions: list[int]) -> dict:
        """Each version's interface, read from its model.json (versions whose model.json does not
        check out are left out: they could not load anyway)."""
        interfaces = {}
        for version in versions:
            try:
                spec = ModelSpec.model_validate_json((self.root / name / str(version) / "model.json").read_bytes())
            except (OSError, ValueError):
                continue
            interfaces[version] = spec.interface()
        return interfaces
