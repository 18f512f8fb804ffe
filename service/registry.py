"""The model repository: scan models/<name>/<version>/, load, check, warm up, serve.

Loading is one path for the first version and every later one: read and check model.json, verify
model.onnx's sha256, open the ONNX Runtime session, check its tensors against model.json, warm it
up, and only then publish it (a dict assignment, atomic under the GIL). A version that fails is
recorded with its reason and never replaces a serving one.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from service.engine import InferenceEngine
from service.errors import ApiError
from service.features import FeatureTransform, stable_hash
from service.modelspec import ModelSpec, sha256_file
from service.settings import Settings

log = logging.getLogger("ranker.registry")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
_ORT_DTYPES = {"int64": "tensor(int64)", "float32": "tensor(float)"}
N_BUCKETS = 100  # users are hashed into 100 A/B buckets


class LoadError(Exception):
    pass


@dataclass
class ModelVersion:
    name: str
    version: int
    path: Path
    spec: ModelSpec
    engine: InferenceEngine
    transform: FeatureTransform
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "state": "ready",
            "family": self.spec.family,
            "provider": self.engine.provider,
            "tasks": [t.name for t in self.spec.tasks],
            "load_seconds": round(self.load_seconds, 4),
        }


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
    expected = {"sparse_ids": len([f for f in spec.features if f.kind == "sparse"]),
                "dense": len([f for f in spec.features if f.kind == "dense"])}  # fmt: skip
    for i in engine.session.get_inputs():
        if i.shape[-1] != expected.get(i.name, i.shape[-1]):
            raise LoadError(f"input {i.name!r} has width {i.shape[-1]}, the feature schema {expected[i.name]}")


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
        )
    except Exception as exc:  # ORT raises several types for a broken graph
        raise LoadError(f"ONNX Runtime cannot open model.onnx: {exc}") from None
    check_tensors(spec, engine)
    transform = FeatureTransform(spec.features)
    engine.warm_up(transform.encode(1).as_inputs(), engine.buckets)
    return ModelVersion(spec.name, spec.version, path, spec, engine, transform, time.perf_counter() - start)


def user_bucket(user_id: str) -> int:
    return stable_hash(f"ab\x1f{user_id}") % N_BUCKETS


class Registry:
    """Loaded versions per model name, and which one serves."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._versions: dict[str, dict[int, ModelVersion]] = {}
        self._active: dict[str, int] = {}
        self.failed: dict[str, str] = {}  # "name/version" -> reason
        self._lock = threading.Lock()  # serialises loads; readers never take it

    def scan(self) -> None:
        """Load the newest loadable version of every model in the repository."""
        root = self.settings.models_dir
        if not root.is_dir():
            log.warning("models directory %s does not exist; nothing to serve", root)
            return
        for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)):
            versions = sorted((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True)
            for version in versions:
                if self.load(model_dir.name, version, activate=True):
                    break

    def load(self, name: str, version: int, activate: bool) -> ModelVersion | None:
        key = f"{name}/{version}"
        with self._lock:
            try:
                loaded = load_version(self.settings.models_dir / name / str(version), self.settings)
            except (LoadError, OSError) as exc:
                self.failed[key] = str(exc)
                log.error("model %s failed to load: %s", key, exc)
                return None
            self.failed.pop(key, None)
            self._versions.setdefault(name, {})[version] = loaded
            if activate:
                self._active[name] = version
            log.info("model %s ready on %s in %.3fs", key, loaded.engine.provider, loaded.load_seconds)
            return loaded

    def ready(self) -> bool:
        return bool(self._active)

    def default_name(self) -> str | None:
        preferred = self.settings.default_model or "ple"
        if preferred in self._active:
            return preferred
        return next(iter(sorted(self._active)), None)

    def resolve(self, name: str | None, version: int | None, user_id: str) -> tuple[ModelVersion, int]:
        """The version a request runs on, and the user's A/B bucket."""
        if not self._active:
            raise ApiError(503, "not_ready", "no model is loaded yet")
        name = name or self.default_name()
        if name not in self._active:
            raise ApiError(404, "model_not_found", f"model {name!r} is not loaded", "model")
        versions = self._versions[name]
        if version is None:
            version = self._active[name]
        elif version not in versions:
            raise ApiError(404, "version_not_found", f"model {name!r} has no loaded version {version}", "version")
        return versions[version], user_bucket(user_id)

    def describe(self) -> list[dict]:
        rows = []
        for name, versions in sorted(self._versions.items()):
            for version, mv in sorted(versions.items()):
                active = self._active.get(name) == version
                rows.append({**mv.describe(), "active": active, "traffic_share": 1.0 if active else 0.0})
        for key, reason in sorted(self.failed.items()):
            name, version = key.split("/")
            rows.append({"name": name, "version": int(version), "state": "failed", "reason": reason,
                         "active": False, "traffic_share": 0.0})  # fmt: skip
        return rows
