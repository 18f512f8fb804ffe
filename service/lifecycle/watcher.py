"""The watcher: a thread that polls the model repository and loads version folders that appear.

In `explicit` mode (the default) a new version is loaded and waits for an admin; in `auto` it also
takes all traffic, through the control plane so that every replica follows, when it has the serving
version's interface and no A/B split runs. A model that serves nothing yet serves by the start-up
rule in either mode: there is no rollout to protect. What serves is the registry's; the watcher
keeps only what it has seen on disk, and changes routing through the registry's operations.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import TYPE_CHECKING

from service.lifecycle.control import ControlUnavailable
from service.lifecycle.repository import VersionState, folder_signature
from service.lifecycle.routing import ControlCorrupt, startup_order

if TYPE_CHECKING:
    from service.lifecycle.registry import Registry

log = logging.getLogger("ranker.registry")


class Watcher:
    def __init__(self, registry: Registry):
        self.registry = registry
        self.settings = registry.settings
        self.root = registry.root
        self._seen: dict[str, set[int]] = defaultdict(set)  # folders handled: loaded, or unloaded by an admin
        self._vanished: set[tuple[str, int]] = set()  # loaded versions whose folder is gone (reported once)
        self._pending: dict[str, int] = {}  # auto: a new version waiting for the control plane
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def mark_handled(self, name: str, versions) -> None:
        """Folders the registry loaded, or an admin unloaded: the watcher does not load them again."""
        self._seen[name].update(versions)

    def cancel_pending(self, name: str) -> None:
        """An admin's routing change wins over a new version the watcher was about to route to."""
        self._pending.pop(name, None)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.watch_interval_s):
            try:
                self.poll()
            except Exception:  # the watcher must outlive any one bad folder
                log.exception("model watcher poll failed")

    def poll(self) -> None:
        """Load version folders that appeared (or failed and changed since); in `auto`, route to a newer
        one with the same interface."""
        registry = self.registry
        self._note_vanished()
        for name in registry.model_names():
            for version in registry.versions_on_disk(name):
                entry = registry.entry(name, version)
                if entry is None and version in self._seen[name]:
                    continue
                if entry is not None and not (entry.state == VersionState.FAILED and
                                              entry.signature != folder_signature(self.root / name / str(version))):
                    continue  # loaded, or failed and unchanged since
                self._seen[name].add(version)
                entry = registry.load(name, version)
                routing = registry.routing_of(name)
                if entry.state != VersionState.READY or routing is None:
                    continue
                if self.settings.watch != "auto" or version <= max(max(routing.state.weights()), self._pending.get(name, 0)):
                    continue
                if routing.state.split:  # an admin's A/B test runs: auto does not end it
                    log.info("model %s/%s loaded; the A/B split %s stays until an admin changes it", name, version,
                             routing.state.weights())  # fmt: skip
                elif registry.interface_change(name, entry.handle) is None:
                    self._pending[name] = version
            if registry.routing_of(name) is None:
                self._serve_first(name)
        for name in list(self._pending):
            with registry.lock(name):  # an admin's change in between cancels the pending version
                version = self._pending.get(name)
                if version is not None and registry.route_new_version(name, version):
                    del self._pending[name]

    def _serve_first(self, name: str) -> None:
        """A model that serves nothing yet: the control plane's state if another replica or an admin
        wrote one, else the start-up rule among the versions loaded."""
        try:
            shared = self.registry.control.read(name)
        except ControlUnavailable:
            return  # the next poll asks again
        except ControlCorrupt as exc:
            self.registry.note_corrupt(name, exc)
            return
        if shared is not None:
            self.registry.apply(name, shared)
            return
        ready = self.registry.ready_interfaces(name)
        if ready:
            self._pending[name] = startup_order(ready)[0]

    def _note_vanished(self) -> None:
        """A loaded version whose folder was deleted keeps serving from memory: log and count it once."""
        loaded = self.registry.loaded()
        try:
            if not self.root.is_dir():
                return  # the whole repository is gone: model_names() reports that
            presence = {(name, version): (self.root / name / str(version)).is_dir() for name, version, _ in loaded}
        except OSError:
            return  # unreadable (permissions): model_names() reports that
        for name, version, entry in loaded:
            key, present = (name, version), presence.get((name, version), True)
            if entry.state == VersionState.FAILED and not present:
                self.registry.forget_failed(name, version)
                self._seen[name].discard(version)
                continue
            if entry.handle is not None and not present and key not in self._vanished:
                self._vanished.add(key)
                self.registry.metrics.repository_events.labels("version_vanished").inc()
                log.warning("model %s/%s: its folder was deleted; the loaded copy keeps serving", name, version)
            elif present:
                self._vanished.discard(key)
