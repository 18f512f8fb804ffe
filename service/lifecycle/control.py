"""The control plane: which version of each model serves, the A/B split and the shadow version,
shared by replicas.

State per model: the active version and an optional split ({version: weight}); routing follows
the split when there is one, else sends everyone to the active version. Every change pushes the
previous state on a history list (for rollback) and is announced, so each replica applies it.
A shadow version ({version, sample}) is kept beside the routing, outside its history.

- InProcessControl: one process, no Redis (the embedded default), same behaviour.
- RedisControl: keys `<prefix>model:<name>:active` (the version), `<prefix>model:<name>:split`
  (JSON shares per version, multiples of 1/10,000, absent when there is no split),
  `<prefix>model:<name>:history` (a list of earlier states, newest first) and
  `<prefix>model:<name>:shadow` (JSON {"version", "sample"}, absent when none); changes are
  announced on the channel `<prefix>events` as {"model": name}. A listener thread applies
  announcements within a second, and re-reads every key after (re)connecting and every few
  seconds, so a replica that missed a message, started later or lived through a Redis outage
  converges without a restart.

About 360 lines: the two implementations of one protocol stay side by side so that their
behaviour can be compared line by line; most of it is Redis's (transactions under WATCH, the
history, the listener and its resync).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol

import orjson
import redis

from service.lifecycle.routing import ControlCorrupt, RoutingState, ShadowSetting, parse_version, state_from_keys

log = logging.getLogger("ranker.control")

HISTORY_LIMIT = 50


class ControlUnavailable(RuntimeError):
    """The shared state cannot be read or written (Redis is down)."""


OnChange = Callable[[str], None]  # called with a model name whose state may have changed
OnUnload = Callable[[str, int], None]  # called with a model version another replica unloaded


class RollbackRefused(Exception):
    """The earlier state cannot be served here (a version gone or failing): nothing was changed."""

    def __init__(self, state: RoutingState):
        super().__init__(f"the earlier state {state.weights()} cannot be loaded")
        self.state = state


Check = Callable[[RoutingState], bool]  # can this replica serve the state? (loads what it needs)


class ControlPlane(Protocol):
    def read(self, name: str) -> RoutingState | None: ...

    def write(self, name: str, state: RoutingState) -> None: ...

    def restore(self, name: str, state: RoutingState) -> bool: ...

    def rollback(self, name: str, check: Check) -> RoutingState | None: ...

    def announce_unload(self, name: str, version: int) -> None: ...

    def read_shadow(self, name: str) -> ShadowSetting | None: ...

    def write_shadow(self, name: str, shadow: ShadowSetting | None) -> None: ...

    def start(
        self, on_change: OnChange, models: Callable[[], list[str]], on_unload: OnUnload | None = None
    ) -> None: ...

    def close(self) -> None: ...


class InProcessControl:
    def __init__(self) -> None:
        self._state: dict[str, RoutingState] = {}
        self._history: dict[str, list[RoutingState]] = {}
        self._shadows: dict[str, ShadowSetting] = {}
        self._lock = threading.Lock()

    def read(self, name: str) -> RoutingState | None:
        return self._state.get(name)

    def write(self, name: str, state: RoutingState) -> None:
        with self._lock:
            previous = self._state.get(name)
            if previous is not None and previous != state:
                self._history.setdefault(name, []).insert(0, previous)
                del self._history[name][HISTORY_LIMIT:]
            self._state[name] = state

    def restore(self, name: str, state: RoutingState) -> bool:
        with self._lock:
            return self._state.setdefault(name, state) is state

    def rollback(self, name: str, check: Check) -> RoutingState | None:
        with self._lock:
            history = self._history.get(name)
            if not history:
                return None
            if not check(history[0]):
                raise RollbackRefused(history[0])
            self._state[name] = history.pop(0)
            return self._state[name]

    def announce_unload(self, name: str, version: int) -> None:
        pass  # one process: nobody else holds a copy

    def read_shadow(self, name: str) -> ShadowSetting | None:
        return self._shadows.get(name)

    def write_shadow(self, name: str, shadow: ShadowSetting | None) -> None:
        if shadow is None:
            self._shadows.pop(name, None)
        else:
            self._shadows[name] = shadow

    def start(self, on_change: OnChange, models: Callable[[], list[str]], on_unload: OnUnload | None = None) -> None:
        pass  # one process: the registry applies its own writes

    def close(self) -> None:
        pass


class RedisControl:
    def __init__(self, client: redis.Redis, prefix: str = "ranker:", resync_s: float = 5.0,
                 on_problem: Callable[[str], None] = lambda event: None):  # fmt: skip
        self.client = client
        self.prefix = prefix
        self.channel = f"{prefix}events"
        self.resync_s = resync_s
        self.on_problem = on_problem  # counts garbage seen: "corrupt_state", "corrupt_history", "bad_message", ...
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_unload: OnUnload | None = None

    def _key(self, name: str, part: str) -> str:
        return f"{self.prefix}model:{name}:{part}"

    def read(self, name: str) -> RoutingState | None:
        try:
            return state_from_keys(*self.client.mget([self._key(name, "active"), self._key(name, "split")]))
        except redis.ResponseError as exc:  # WRONGTYPE: a key of another type under our name
            raise ControlCorrupt(str(exc)) from exc
        except redis.RedisError as exc:
            raise ControlUnavailable(str(exc)) from exc

    def _set(self, pipe, name: str, state: RoutingState) -> None:
        pipe.set(self._key(name, "active"), state.active)
        if state.split:
            pipe.set(self._key(name, "split"), orjson.dumps(state.stored_split()))
        else:
            pipe.delete(self._key(name, "split"))
        pipe.publish(self.channel, orjson.dumps({"model": name}))

    def write(self, name: str, state: RoutingState) -> None:
        def change(pipe):
            previous = self._read_in(pipe, name)
            history_ok = self._history_ok(pipe, name)
            pipe.multi()
            if not history_ok:
                pipe.delete(self._key(name, "history"))
            if previous is not None and previous != state:
                pipe.lpush(self._key(name, "history"), previous.to_json())
                pipe.ltrim(self._key(name, "history"), 0, HISTORY_LIMIT - 1)
            self._set(pipe, name, state)

        self._transaction(change, name)

    def restore(self, name: str, state: RoutingState) -> bool:
        """Write `state` only if no replica has (the keys were lost: Redis restarted empty)."""
        restored = [False]

        def change(pipe):
            if pipe.exists(self._key(name, "active")):
                return
            pipe.multi()
            self._set(pipe, name, state)
            restored[0] = True

        self._transaction(change, name)
        return restored[0]

    def rollback(self, name: str, check: Check) -> RoutingState | None:
        """Go back to the newest history entry this replica can serve (`check`); entries that are
        garbage are dropped on the way. RollbackRefused, with nothing changed, if `check` fails."""
        result: list[RoutingState | None] = [None]

        def change(pipe):
            result[0] = None
            history = self._key(name, "history")
            entries = pipe.lrange(history, 0, -1) if self._history_ok(pipe, name) else [b"(not a list)"]
            for skipped, raw in enumerate(entries):
                try:
                    state = RoutingState.from_json(raw)
                except ControlCorrupt as exc:
                    log.warning("control history of %s: entry %d ignored (%s)", name, skipped, exc)
                    self.on_problem("corrupt_history")
                    continue
                if not check(state):
                    raise RollbackRefused(state)  # before multi(): nothing is written
                pipe.multi()
                pipe.ltrim(history, skipped + 1, -1)
                self._set(pipe, name, state)
                result[0] = state
                return
            pipe.multi()
            if entries:  # nothing but garbage
                pipe.delete(history)

        self._transaction(change, name)
        return result[0]

    def _read_in(self, pipe, name: str) -> RoutingState | None:
        """The current state inside a transaction; garbage reads as no state (it is overwritten)."""
        try:
            return state_from_keys(pipe.get(self._key(name, "active")), pipe.get(self._key(name, "split")))
        except (ControlCorrupt, redis.ResponseError) as exc:
            log.warning("control state of %s was garbage (%s); overwritten", name, exc)
            self.on_problem("corrupt_state")
            return None

    def _history_ok(self, pipe, name: str) -> bool:
        """False when the history key holds another type than a list (it is then dropped)."""
        kind = pipe.type(self._key(name, "history"))
        if kind in (b"list", b"none", "list", "none"):
            return True
        log.warning("control history of %s is a %s, not a list; dropped", name, kind)
        self.on_problem("corrupt_history")
        return False

    def _transaction(self, change, name: str) -> None:
        keys = [self._key(name, p) for p in ("active", "split", "history")]
        try:
            # WATCH the keys: a concurrent change from another replica makes this one retry.
            self.client.transaction(change, *keys)
        except redis.RedisError as exc:
            raise ControlUnavailable(str(exc)) from exc

    # ---- the shadow version (not part of the routing history: a rollback leaves it alone) ----

    def read_shadow(self, name: str) -> ShadowSetting | None:
        try:
            return ShadowSetting.from_json(self.client.get(self._key(name, "shadow")))
        except redis.ResponseError as exc:
            raise ControlCorrupt(str(exc)) from exc
        except redis.RedisError as exc:
            raise ControlUnavailable(str(exc)) from exc

    def write_shadow(self, name: str, shadow: ShadowSetting | None) -> None:
        """Set or clear the shadow and announce it: every replica re-reads the model's keys."""
        try:
            pipe = self.client.pipeline(transaction=True)
            if shadow is None:
                pipe.delete(self._key(name, "shadow"))
            else:
                pipe.set(self._key(name, "shadow"), shadow.to_json())
            pipe.publish(self.channel, orjson.dumps({"model": name}))
            pipe.execute()
        except redis.RedisError as exc:
            raise ControlUnavailable(str(exc)) from exc

    # ---- listening ----

    def announce_unload(self, name: str, version: int) -> None:
        """Tell the other replicas (and worker processes) to drop their copy of a version that
        takes no traffic: {"model": name, "unload": version} on the channel."""
        try:
            self.client.publish(self.channel, orjson.dumps({"model": name, "unload": version}))
        except redis.RedisError as exc:
            raise ControlUnavailable(str(exc)) from exc

    def start(self, on_change: OnChange, models: Callable[[], list[str]], on_unload: OnUnload | None = None) -> None:
        self._on_unload = on_unload
        self._thread = threading.Thread(target=self._listen, args=(on_change, models), name="control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _listen(self, on_change: OnChange, models: Callable[[], list[str]]) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                backoff = 0.1
                self._resync(on_change, models)  # whatever changed while we were not listening
                last_resync = time.monotonic()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.25)
                    if message and message["type"] == "message":
                        self._announced(on_change, message["data"])
                    if time.monotonic() - last_resync >= self.resync_s:
                        self._resync(on_change, models)
                        last_resync = time.monotonic()
            except (redis.RedisError, OSError) as exc:
                log.warning("control channel lost (%s); retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:  # the listener must outlive anything: without it replicas stop converging
                log.exception("control listener failed; restarting it")
                self.on_problem("listener_error")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                try:
                    pubsub.close()
                except (redis.RedisError, OSError):
                    pass

    def _announced(self, on_change: OnChange, data: object) -> None:
        name, unload = _announced_model(data)
        if name is None:
            log.warning("control channel: ignored a message that names no model: %.80r", data)
            self.on_problem("bad_message")
            return
        on_unload = self._on_unload
        if unload is None:
            _safely(on_change, name)
        elif on_unload is not None:
            _safely(lambda model: on_unload(model, unload), name)

    def _resync(self, on_change: OnChange, models: Callable[[], list[str]]) -> None:
        for name in models():
            _safely(on_change, name)


def _announced_model(data: object) -> tuple[str | None, int | None]:
    """The model named by a message on the channel ({"model": name}, or {"model": name, "unload":
    version}) and the version to unload; (None, None) for anything else."""
    try:
        message = orjson.loads(data)  # type: ignore[arg-type]
    except (orjson.JSONDecodeError, TypeError):
        return None, None
    name = message.get("model") if isinstance(message, dict) else None
    if not isinstance(name, str):
        return None, None
    if "unload" not in message:
        return name, None
    try:
        return name, parse_version(message["unload"])
    except ControlCorrupt:
        return None, None


def _safely(on_change: OnChange, name: str) -> None:
    # A model that fails to apply must not stop the listener for every other model.
    try:
        on_change(name)
    except ControlUnavailable:
        raise redis.ConnectionError("control state unreadable") from None
    except Exception:
        log.exception("applying the control state of model %s failed", name)
