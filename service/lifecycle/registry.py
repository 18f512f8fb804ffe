"""Model lifecycle: the versions loaded from the repository, the routing each model serves by, and
the admin operations that change it.

Routing per model is an immutable `Routing` object replaced by one assignment, so a request that
picked a version finishes on it, and the old session is freed when its last request lets go. A
version that fails to load is marked failed with its reason and never touches what serves.
Loading itself is service.lifecycle.repository's, bucket routing service.lifecycle.routing's, new
folders service.lifecycle.watcher's, shadows service.lifecycle.shadows'. The module is ~480 lines
because the admin operations and the control-plane sync change the same three pieces of state
(entries, routing, corrupt) under one lock per model; splitting them would spread that locking
over modules.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from service.lifecycle.control import ControlPlane, ControlUnavailable, RollbackRefused
from service.lifecycle.repository import (LoadError, ModelVersion, Repository, VersionEntry, VersionState,
                                          folder_signature, load_version, release_memory)
from service.lifecycle.routing import (N_BUCKETS, ControlCorrupt, Routing, RoutingState, bucket_counts, startup_order,
                                       user_bucket)
from service.lifecycle.shadows import Shadows
from service.lifecycle.watcher import Watcher
from service.observability.metrics import Metrics
from service.problems import Conflict, InvalidInput, NotFound, Problem, Unavailable
from service.settings import Settings

log = logging.getLogger("ranker.registry")

__all__ = ["Registry", "ModelVersion", "VersionEntry", "VersionInfo", "VersionState", "load_version"]  # re-exported: what callers of the registry use


@dataclass(frozen=True)
class VersionInfo:
    """One version as GET /v1/models lists it. The fields from `compatible` on are there for a loaded
    version only; `interface_change` only when it differs from the serving version's, `reason` only
    for a failed one."""

    name: str
    version: int
    state: VersionState
    active: bool
    traffic_share: float
    compatible: bool | None = None  # has the serving version's interface
    interface_change: str | None = None
    family: str | None = None
    provider: str | None = None
    io_binding: bool | None = None
    cuda_graph: bool | None = None
    cpu_threads: int | str | None = None
    tasks: list[str] | None = None
    default_weights: dict[str, float] | None = None
    load_seconds: float | None = None
    shadow_sample: float | None = None  # the share of the model's requests this version shadows
    reason: str | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Registry:
    def __init__(self, settings: Settings, metrics: Metrics, control: ControlPlane):
        self.settings = settings
        self.metrics = metrics
        self.control = control
        self.root = settings.models_dir
        self.repository = Repository(settings.models_dir, metrics)
        self._entries: dict[str, dict[int, VersionEntry]] = defaultdict(dict)
        self._routing: dict[str, Routing] = {}
        self._corrupt: dict[str, str] = {}  # model -> the garbage last seen in its control keys (logged once)
        # Versions another replica unloaded while they still took traffic here: dropped once routing moves off them.
        self._unload_when_unrouted: dict[str, set[int]] = defaultdict(set)
        self._locks: dict[str, threading.RLock] = defaultdict(threading.RLock)
        self.watcher = Watcher(self)
        self.shadows = Shadows(self)

    # ---- lifecycle ----

    def start(self) -> None:
        for name in self.model_names():
            self._start_model(name)
        self.control.start(self.sync_from_control, self.model_names, self.drop_unloaded_elsewhere)
        if self.settings.watch != "off":
            self.watcher.start()

    def close(self) -> None:
        self.watcher.close()
        self.control.close()

    def _start_model(self, name: str) -> None:
        versions = self.versions_on_disk(name)
        self.watcher.mark_handled(name, versions)
        self._start_routing(name, versions)
        try:
            self.shadows.sync(name)
        except ControlUnavailable:
            pass  # the control listener reads it once Redis answers

    def _start_routing(self, name: str, versions: list[int]) -> None:
        shared, corrupt = None, False
        try:
            shared = self.control.read(name)
        except ControlUnavailable as exc:
            log.warning("control plane unavailable at start (%s); %s serves by the start-up rule", exc, name)
        except ControlCorrupt as exc:
            self.note_corrupt(name, exc)
            corrupt = True
        if shared is not None and self.apply(name, shared):
            return
        interfaces = self.repository.interfaces(name, versions)
        for version in startup_order(interfaces):
            if self.load(name, version).state == VersionState.READY:
                state = RoutingState(version)
                self._set_routing(name, state)
                if shared is None and not corrupt:  # first replica to serve this model: record it for the others
                    self._write_control(name, state, required=False)
                others = sorted(v for v, i in interfaces.items() if i != interfaces[version])
                if others:
                    self.metrics.incompatible_versions.labels(name).inc(len(others))
                    log.warning("model %s: versions %s have another interface than %s/%s (%s); not served. An admin "
                                "routes to one with allow_interface_change", name, others, name, version,
                                interfaces[version].difference(interfaces[others[-1]]))  # fmt: skip
                return

    def note_corrupt(self, name: str, exc: ControlCorrupt) -> None:
        """Garbage in a model's control keys: keep routing as is; say so once per distinct value."""
        if self._corrupt.get(name) != str(exc):
            self._corrupt[name] = str(exc)
            self.metrics.control_events.labels("corrupt_state").inc()
            log.error("control state of %s is not usable (%s); routing stays as it is until an admin change "
                      "overwrites it", name, exc)  # fmt: skip

    # ---- the repository on disk ----

    def model_names(self) -> list[str]:
        return self.repository.model_names()

    def versions_on_disk(self, name: str) -> list[int]:
        return self.repository.versions(name)

    def version_path(self, name: str, version: int) -> Path:
        return self.repository.path(name, version)

    # ---- loading ----

    def load(self, name: str, version: int) -> VersionEntry:
        """Load, check and warm up one version (no routing change). Safe to call again."""
        with self._locks[name]:
            current = self._entries[name].get(version)
            if current is not None and current.state == VersionState.READY:
                return current
            entry = VersionEntry(name, version, VersionState.LOADING)
            self._entries[name][version] = entry
            try:
                path = self.version_path(name, version)
                entry.signature = folder_signature(path)
                handle = load_version(path, self.settings)
            except (LoadError, OSError, Problem) as exc:
                entry.state, entry.reason = VersionState.FAILED, str(exc)
                self.metrics.model_loads.labels(name, "failed").inc()
                log.error("model %s/%s failed to load: %s", name, version, exc)
                return entry
            entry.handle, entry.state, entry.since = handle, VersionState.READY, time.time()
            self.metrics.model_loads.labels(name, "ok").inc()
            self.metrics.model_load_seconds.labels(name).observe(handle.load_seconds)
            log.info("model %s/%s ready on %s in %.3fs", name, version, handle.engine.describe(), handle.load_seconds)
            change = self.interface_change(name, handle)
            if change is not None:
                self.metrics.incompatible_versions.labels(name).inc()
                log.warning("model %s/%s has another interface than the serving version (%s); it takes no traffic "
                            "unless an admin activates it with allow_interface_change", name, version, change)  # fmt: skip
            return entry

    def interface_change(self, name: str, handle: ModelVersion) -> str | None:
        """How `handle`'s interface differs from the serving version's (None: the same, or nothing serves).
        A model name keeps one interface: requests written for it must keep working whatever version answers."""
        routing = self._routing.get(name)
        if routing is None:
            return None
        serving = next((mv for mv in routing.versions if mv.version == routing.state.active), routing.versions[0])
        return serving.spec.interface().difference(handle.spec.interface())

    def _check_interface(self, name: str, versions, allow_change: bool) -> None:
        """409 when routing to `versions` would change the model's interface and the admin did not say so."""
        if allow_change:
            return
        for version in versions:
            handle = self._entries[name][version].handle
            assert handle is not None
            change = self.interface_change(name, handle)
            if change is not None:
                raise Conflict("interface_change", f"{name}/{version} has another interface than the serving "
                               f"version ({change}); requests written for {name} may fail on it. Send "
                               '"allow_interface_change": true to route to it anyway', "allow_interface_change")  # fmt: skip

    # ---- routing ----

    def _prepare(self, name: str, state: RoutingState) -> bool:
        """Load every version `state` routes to; False (logged) if one is missing or fails."""
        with self._locks[name]:
            for version in state.weights():
                entry = self._entries[name].get(version)
                if entry is not None and entry.state == VersionState.READY:
                    continue
                try:
                    present = (self.root / name / str(version)).is_dir()
                except OSError:  # the repository unreadable
                    present = False
                if not present:
                    log.error("control state of %s names version %s, which is not in the repository", name, version)
                    return False
                if self.load(name, version).state != VersionState.READY:
                    return False
            return True

    def apply(self, name: str, state: RoutingState) -> bool:
        """Route per `state`, loading what it needs; keeps the current routing if anything fails."""
        with self._locks[name]:
            current = self._routing.get(name)
            if current is not None and current.state == state:
                return True
            if not self._prepare(name, state):
                return False
            self._set_routing(name, state)
            return True

    def _set_routing(self, name: str, state: RoutingState) -> None:
        handles = {v: self._entries[name][v].handle for v in state.weights()}
        previous = self._routing.get(name)
        self._routing[name] = Routing(state, handles)  # the atomic switch
        if previous is not None:
            self.metrics.model_swaps.labels(name).inc()
            for v in previous.state.weights():
                self.metrics.traffic_share.labels(name, str(v)).set(0.0)
        for v, w in state.weights().items():
            self.metrics.traffic_share.labels(name, str(v)).set(w)
        self.metrics.active_version.labels(name).set(state.active)
        log.info("model %s now routes %s", name, state.weights())
        for version in sorted(self._unload_when_unrouted[name] - set(state.weights())):
            self._unload_when_unrouted[name].discard(version)
            if version in self._entries[name]:
                self._drop(name, version)
                log.info("model %s/%s unloaded (announced by another replica; it no longer takes traffic here)",
                         name, version)  # fmt: skip

    def sync_from_control(self, name: str) -> None:
        """Apply the shared state of `name` (called by the control plane's listener)."""
        self.shadows.sync(name)
        try:
            state = self.control.read(name)
        except ControlCorrupt as exc:
            self.note_corrupt(name, exc)
            return
        self._corrupt.pop(name, None)
        if state is not None:
            self.apply(name, state)
            return
        current = self._routing.get(name)
        # No state stored, yet this replica routes: Redis lost its keys (restarted empty). Put this
        # replica's routing back, unless another replica or an admin has written one meanwhile.
        if current is not None and self.control.restore(name, current.state):
            self.metrics.control_events.labels("keys_restored").inc()
            log.warning("control keys of %s were missing (Redis restarted empty?); restored %s from this replica",
                        name, current.state.weights())  # fmt: skip

    def _write_control(self, name: str, state: RoutingState, required: bool = True) -> None:
        try:
            self.control.write(name, state)
        except ControlUnavailable as exc:
            if required:
                raise Unavailable("control_unavailable", f"cannot share the change with replicas: {exc}") from None
            log.warning("could not record %s's routing in the control plane: %s", name, exc)

    def ready_entry(self, name: str, version: int) -> VersionEntry:
        entry = self._entries.get(name, {}).get(version)
        if entry is None:
            raise NotFound("version_not_found", f"{name}/{version} is not loaded", "version")
        if entry.state != VersionState.READY:
            raise Conflict("version_not_ready", f"{name}/{version} is {entry.state}", "version")
        return entry

    # ---- admin operations ----

    def admin_load(self, name: str, version: int) -> VersionEntry:
        try:
            present = self.version_path(name, version).is_dir()
        except OSError as exc:
            raise Unavailable("repository_unreadable", f"the model repository cannot be read: {exc}") from None
        if not present:
            raise NotFound("version_not_found", f"no folder {name}/{version} in the repository", "version")
        self.watcher.mark_handled(name, [version])
        self._unload_when_unrouted[name].discard(version)  # loaded here on purpose: kept
        return self.load(name, version)

    def activate(self, name: str, version: int, allow_interface_change: bool = False) -> RoutingState:
        with self._locks[name]:
            self.ready_entry(name, version)
            self._check_interface(name, [version], allow_interface_change)
            state = RoutingState(version)
            self._write_control(name, state)
            self.watcher.cancel_pending(name)  # an admin's choice wins over the watcher's pending one
            self._set_routing(name, state)
            return state

    def split(self, name: str, weights: dict[int, float], allow_interface_change: bool = False) -> RoutingState:
        with self._locks[name]:
            if max(weights.values()) <= 0:
                raise InvalidInput("invalid_split", "split weights must have a positive sum", "weights")
            for version in sorted(weights):
                if weights[version] == 0:  # a typo'd weight must not quietly take an arm out of the test
                    raise InvalidInput("invalid_split", f"version {version} has weight 0: every version in a split "
                                   "needs a weight > 0 (leave a version out to give it no traffic)", f"weights.{version}")  # fmt: skip
            current = self._routing.get(name)
            if current is not None and current.state.active not in weights:
                # {"2": 1.0} while 1 serves would silently be an activate; a split changes shares, not the baseline.
                raise InvalidInput("invalid_split", f"a split must include the active version {current.state.active} "
                               f"with a weight > 0; to move everyone to another version, activate it", "weights")  # fmt: skip
            for version in weights:
                self.ready_entry(name, version)
            self._check_interface(name, weights, allow_interface_change)
            counts = bucket_counts(weights)
            for version in sorted(counts):
                if counts[version] == 0:
                    raise InvalidInput("invalid_split", f"version {version}'s share is below one A/B bucket in "
                                   f"{N_BUCKETS:,}: it would get no user", f"weights.{version}")  # fmt: skip
            active = max(counts, key=lambda v: (counts[v], v))
            state = RoutingState(active, counts if len(counts) > 1 else None)
            self._write_control(name, state)
            self.watcher.cancel_pending(name)
            self._set_routing(name, state)
            return state

    def rollback(self, name: str) -> RoutingState:
        with self._locks[name]:
            if name not in self._routing:
                raise NotFound("model_not_found", f"model {name!r} is not serving", "name")
            try:
                # Checked before anything is written: a state this replica cannot serve stays in the history.
                state = self.control.rollback(name, lambda earlier: self._prepare(name, earlier))
            except ControlUnavailable as exc:
                raise Unavailable("control_unavailable", f"cannot share the change with replicas: {exc}") from None
            except RollbackRefused as exc:
                raise Conflict("rollback_failed", str(exc)) from None
            if state is None:
                raise Conflict("no_history", f"model {name!r} has no earlier state to roll back to")
            self.watcher.cancel_pending(name)
            self.apply(name, state)
            return state

    def unload(self, name: str, version: int) -> None:
        with self._locks[name]:
            if version not in self._entries.get(name, {}):
                raise NotFound("version_not_found", f"{name}/{version} is not loaded", "version")
            routing = self._routing.get(name)
            if routing is not None and version in routing.state.weights():
                raise Conflict("version_serving", f"{name}/{version} receives traffic; route it away first", "version")
            self._drop(name, version)
            log.info("model %s/%s unloaded", name, version)
        try:  # the other replicas and worker processes drop their copies too
            self.control.announce_unload(name, version)
        except ControlUnavailable as exc:
            log.warning("model %s/%s unloaded here; the other replicas keep their copy (%s)", name, version, exc)

    def drop_unloaded_elsewhere(self, name: str, version: int) -> None:
        """Another replica unloaded `version`: drop this replica's copy too, unless it routes here."""
        with self._locks[name]:
            self.watcher.mark_handled(name, [version])  # not loaded again from its folder
            routing = self._routing.get(name)
            if version not in self._entries.get(name, {}):
                return
            if routing is not None and version in routing.state.weights():
                self._unload_when_unrouted[name].add(version)
                log.warning("model %s/%s: another replica unloaded it, but it takes traffic here; dropped once "
                            "routing moves off it", name, version)  # fmt: skip
                return
            self._drop(name, version)
            log.info("model %s/%s unloaded (announced by another replica)", name, version)

    def _drop(self, name: str, version: int) -> None:
        entry = self._entries[name].pop(version)  # in-flight requests keep their own reference
        if entry.handle is not None:
            self.metrics.forget_version(entry.handle)
        del entry
        release_memory()

    # ---- the request path ----

    def ready(self) -> bool:
        return bool(self._routing)

    def default_name(self) -> str | None:
        preferred = self.settings.default_model or "ple"
        if preferred in self._routing:
            return preferred
        return next(iter(sorted(self._routing)), None)

    def resolve(self, name: str | None, version: int | None, user_id: str) -> tuple[ModelVersion, int]:
        """The version a request runs on, and the user's A/B bucket."""
        if not self._routing:
            raise Unavailable("not_ready", "no model is loaded yet")
        name = name or self.default_name()
        bucket = user_bucket(user_id)
        if version is not None:
            return self.pinned(name, version), bucket
        return self._serving_routing(name, "model").pick(bucket), bucket

    def pinned(self, name: str, version: int) -> ModelVersion:
        """A named, ready version (404 if unknown, 409 if loading or failed)."""
        handle = self.ready_entry(name, version).handle
        assert handle is not None
        return handle

    def serving(self, name: str) -> ModelVersion:
        """The active version of a model (the one users outside any split arm get)."""
        routing = self._serving_routing(name, "name")
        return next((mv for mv in routing.versions if mv.version == routing.state.active), routing.versions[0])

    def _serving_routing(self, name: str, field: str) -> Routing:
        routing = self._routing.get(name)
        if routing is None:
            raise NotFound("model_not_found", f"model {name!r} is not serving", field)
        return routing

    def handle(self, name: str, version: int) -> ModelVersion | None:
        entry = self._entries.get(name, {}).get(version)
        return entry.handle if entry else None

    def describe(self, name: str | None = None) -> list[VersionInfo]:
        rows = []
        for model in sorted(self._entries) if name is None else [name]:
            routing = self._routing.get(model)
            weights = routing.state.weights() if routing else {}
            shadow = self.shadows.setting(model)
            for version, entry in sorted(self._entries.get(model, {}).items()):
                info = VersionInfo(model, version, entry.state, routing is not None and routing.state.active == version,
                                   weights.get(version, 0.0), reason=entry.reason,
                                   shadow_sample=shadow.sample if shadow and shadow.version == version else None)  # fmt: skip
                if entry.handle is not None:
                    spec, engine = entry.handle.spec, entry.handle.engine.describe()
                    change = self.interface_change(model, entry.handle)
                    info = replace(info, compatible=change is None, interface_change=change, family=spec.family,
                                   provider=engine["provider"], io_binding=engine["io_binding"],
                                   cuda_graph=engine["cuda_graph"], cpu_threads=engine["cpu_threads"],
                                   tasks=[t.name for t in spec.tasks], default_weights=spec.scoring.weights,
                                   load_seconds=round(entry.handle.load_seconds, 4))  # fmt: skip
                rows.append(info)
        return rows

    # ---- what the watcher reads and changes (service.lifecycle.watcher) ----

    def lock(self, name: str) -> threading.RLock:
        return self._locks[name]

    def entry(self, name: str, version: int) -> VersionEntry | None:
        return self._entries.get(name, {}).get(version)

    def routing_of(self, name: str) -> Routing | None:
        return self._routing.get(name)

    def loaded(self) -> list[tuple[str, int, VersionEntry]]:
        return [(name, version, entry) for name, entries in list(self._entries.items())
                for version, entry in list(entries.items())]  # fmt: skip

    def forget_failed(self, name: str, version: int) -> None:
        """A failed version whose folder was removed: nothing is left to report."""
        with self._locks[name]:
            entry = self._entries[name].get(version)
            if entry is not None and entry.state == VersionState.FAILED:
                del self._entries[name][version]

    def ready_interfaces(self, name: str) -> dict:
        return {v: e.handle.spec.interface() for v, e in self._entries.get(name, {}).items() if e.handle}

    def route_new_version(self, name: str, version: int) -> bool:
        """auto: route all traffic to `version` through the control plane, so that every replica follows.
        False while the control plane is down (a local switch would make this replica disagree with the
        others): the watcher tries again at its next poll."""
        with self._locks[name]:
            entry = self._entries[name].get(version)
            if entry is None or entry.handle is None or self.interface_change(name, entry.handle) is not None:
                return True  # unloaded, or an admin changed the interface meanwhile: nothing to route
            state = RoutingState(version)
            try:
                self.control.write(name, state)
            except ControlUnavailable as exc:
                log.warning("new version %s/%s loaded; routing to it waits for the control plane (%s)", name, version, exc)
                return False
            self._set_routing(name, state)
            return True
