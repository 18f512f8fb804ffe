"""Shadow versions: per model, a loaded version that scores a sampled share of the requests off the
request path, so that a new version is compared with the serving one on live traffic before it
takes any (the comparison itself is service.ranking.shadow's).

The setting lives in the control plane beside the routing (`<prefix>model:<name>:shadow`), so
every replica and worker process follows it; a replica loads the shadow version from its folder
when it has no copy. A shadow version that is unloaded or fails to load is skipped and counted:
a shadow never fails a request.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

from service.lifecycle.control import ControlUnavailable
from service.lifecycle.repository import ModelVersion, VersionState
from service.lifecycle.routing import ControlCorrupt, ShadowSetting
from service.problems import Conflict, NotFound, Unavailable

if TYPE_CHECKING:
    from service.lifecycle.registry import Registry

log = logging.getLogger("ranker.registry")


class Shadows:
    def __init__(self, registry: Registry):
        self.registry = registry
        self._settings: dict[str, ShadowSetting] = {}
        self._corrupt: dict[str, str] = {}  # model -> the garbage last seen in its shadow key (logged once)

    def setting(self, name: str) -> ShadowSetting | None:
        return self._settings.get(name)

    def pick(self, name: str) -> ModelVersion | None:
        """The shadow version for one request of `name`, if one is set and this request is sampled."""
        setting = self._settings.get(name)
        if setting is None or random.random() >= setting.sample:
            return None
        entry = self.registry.entry(name, setting.version)
        if entry is None or entry.handle is None:
            self.registry.metrics.shadow_requests.labels(name, "not_loaded").inc()
            return None
        return entry.handle

    # ---- admin ----

    def set(self, name: str, version: int, sample: float) -> ShadowSetting:
        registry = self.registry
        with registry.lock(name):
            routing = registry.routing_of(name)
            if routing is None:
                raise NotFound("model_not_found", f"model {name!r} is not serving", "name")
            registry.ready_entry(name, version)
            if version in routing.state.weights():
                raise Conflict("version_serving", f"{name}/{version} takes traffic; a shadow must be a version "
                               "that does not", "version")  # fmt: skip
            setting = ShadowSetting(version, sample)
            self._write(name, setting)
            self._settings[name] = setting
            log.info("model %s: version %s shadows %.0f%% of requests", name, version, 100 * sample)
            return setting

    def clear(self, name: str) -> None:
        with self.registry.lock(name):
            if self.registry.routing_of(name) is None:
                raise NotFound("model_not_found", f"model {name!r} is not serving", "name")
            self._write(name, None)
            if self._settings.pop(name, None) is not None:
                log.info("model %s: shadow stopped", name)

    def _write(self, name: str, setting: ShadowSetting | None) -> None:
        try:
            self.registry.control.write_shadow(name, setting)
        except ControlUnavailable as exc:
            raise Unavailable("control_unavailable", f"cannot share the change with replicas: {exc}") from None

    # ---- following the control plane ----

    def sync(self, name: str) -> None:
        """Apply the stored setting of `name` (start-up, the control listener, its resync).
        ControlUnavailable passes up: the listener reconnects and reads again."""
        try:
            setting = self.registry.control.read_shadow(name)
        except ControlCorrupt as exc:
            if self._corrupt.get(name) != str(exc):  # once per distinct value, not at every resync
                self._corrupt[name] = str(exc)
                self.registry.metrics.control_events.labels("corrupt_state").inc()
                log.error("shadow setting of %s is not usable (%s); the shadow stays as it is", name, exc)
            return
        self._corrupt.pop(name, None)
        if setting == self._settings.get(name):
            return
        if setting is None:
            self._settings.pop(name, None)
            log.info("model %s: shadow stopped (set by another replica)", name)
            return
        entry = self.registry.entry(name, setting.version)
        if (entry is None or entry.state == VersionState.FAILED) and self.registry.version_path(name, setting.version).is_dir():
            self.registry.load(name, setting.version)  # another replica set it: load this replica's copy
        self._settings[name] = setting
        log.info("model %s: version %s shadows %.0f%% of requests (set by another replica)", name, setting.version,
                 100 * setting.sample)  # fmt: skip
