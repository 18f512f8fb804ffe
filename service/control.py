"""The control plane: which version of each model serves, and the A/B split, shared by replicas.

State per model: the active version and an optional split ({version: weight}); routing follows
the split when there is one, else sends everyone to the active version. Every change pushes the
previous state on a history list (for rollback) and is announced, so each replica applies it.

- InProcessControl: one process, no Redis (the embedded default), same behaviour.
- RedisControl: keys `<prefix>model:<name>:active` (the version), `<prefix>model:<name>:split`
  (JSON weights, absent when there is no split), `<prefix>model:<name>:history` (a list of earlier
  states, newest first); changes are announced on the channel `<prefix>events` as
  {"model": name}. A listener thread applies announcements within a second, and re-reads every key
  after (re)connecting and every few seconds, so a replica that missed a message, started later or
  lived through a Redis outage converges without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import orjson
import redis

log = logging.getLogger("ranker.control")

HISTORY_LIMIT = 50


class ControlUnavailable(RuntimeError):
    """The shared state cannot be read or written (Redis is down)."""


@dataclass(frozen=True)
class RoutingState:
    active: int
    split: dict[int, float] | None = None  # normalised weights summing to 1, or None

    def weights(self) -> dict[int, float]:
        return dict(self.split) if self.split else {self.active: 1.0}

    def to_json(self) -> bytes:
        return orjson.dumps({"active": self.active, "split": {str(k): v for k, v in (self.split or {}).items()} or None})

    @classmethod
    def from_json(cls, raw: bytes | str) -> "RoutingState":
        data = orjson.loads(raw)
        return cls(int(data["active"]), {int(k): float(v) for k, v in data["split"].items()} if data["split"] else None)


OnChange = Callable[[str], None]  # called with a model name whose state may have changed


class ControlPlane(Protocol):
    def read(self, name: str) -> RoutingState | None: ...

    def write(self, name: str, state: RoutingState) -> None: ...

    def rollback(self, name: str) -> RoutingState | None: ...

    def start(self, on_change: OnChange, models: Callable[[], list[str]]) -> None: ...

    def close(self) -> None: ...


class InProcessControl:
    def __init__(self) -> None:
        self._state: dict[str, RoutingState] = {}
        self._history: dict[str, list[RoutingState]] = {}
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

    def rollback(self, name: str) -> RoutingState | None:
        with self._lock:
            history = self._history.get(name)
            if not history:
                return None
            self._state[name] = history.pop(0)
            return self._state[name]

    def start(self, on_change: OnChange, models: Callable[[], list[str]]) -> None:
        pass  # one process: the registry applies its own writes

    def close(self) -> None:
        pass


class RedisControl:
    def __init__(self, client: redis.Redis, prefix: str = "ranker:", resync_s: float = 5.0):
        self.client = client
        self.prefix = prefix
        self.channel = f"{prefix}events"
        self.resync_s = resync_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _key(self, name: str, part: str) -> str:
        return f"{self.prefix}model:{name}:{part}"

    def read(self, name: str) -> RoutingState | None:
        try:
            return _parse(*self.client.mget([self._key(name, "active"), self._key(name, "split")]))
        except redis.RedisError as exc:
            raise ControlUnavailable(str(exc)) from exc

    def _set(self, pipe, name: str, state: RoutingState) -> None:
        pipe.set(self._key(name, "active"), state.active)
        if state.split:
            pipe.set(self._key(name, "split"), orjson.dumps({str(k): v for k, v in state.split.items()}))
        else:
            pipe.delete(self._key(name, "split"))
        pipe.publish(self.channel, orjson.dumps({"model": name}))

    def write(self, name: str, state: RoutingState) -> None:
        def change(pipe):
            previous = self._read_in(pipe, name)
            pipe.multi()
            if previous is not None and previous != state:
                pipe.lpush(self._key(name, "history"), previous.to_json())
                pipe.ltrim(self._key(name, "history"), 0, HISTORY_LIMIT - 1)
            self._set(pipe, name, state)

        self._transaction(change, name)

    def rollback(self, name: str) -> RoutingState | None:
        result: list[RoutingState | None] = [None]

        def change(pipe):
            raw = pipe.lindex(self._key(name, "history"), 0)
            pipe.multi()
            if raw is None:
                result[0] = None
                return
            result[0] = RoutingState.from_json(raw)
            pipe.lpop(self._key(name, "history"))
            self._set(pipe, name, result[0])

        self._transaction(change, name)
        return result[0]

    def _read_in(self, pipe, name: str) -> RoutingState | None:
        return _parse(pipe.get(self._key(name, "active")), pipe.get(self._key(name, "split")))

    def _transaction(self, change, name: str) -> None:
        keys = [self._key(name, p) for p in ("active", "split", "history")]
        try:
            # WATCH the keys: a concurrent change from another replica makes this one retry.
            self.client.transaction(change, *keys)
        except redis.RedisError as exc:
            raise ControlUnavailable(str(exc)) from exc

    # ---- listening ----

    def start(self, on_change: OnChange, models: Callable[[], list[str]]) -> None:
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
                        _safely(on_change, orjson.loads(message["data"])["model"])
                    if time.monotonic() - last_resync >= self.resync_s:
                        self._resync(on_change, models)
                        last_resync = time.monotonic()
            except (redis.RedisError, OSError) as exc:
                log.warning("control channel lost (%s); retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                try:
                    pubsub.close()
                except (redis.RedisError, OSError):
                    pass

    def _resync(self, on_change: OnChange, models: Callable[[], list[str]]) -> None:
        for name in models():
            _safely(on_change, name)


def _parse(active: bytes | None, split: bytes | None) -> RoutingState | None:
    """The state stored under the active and split keys (None when no version was ever set)."""
    if active is None:
        return None
    return RoutingState(int(active), {int(k): float(v) for k, v in orjson.loads(split).items()} if split else None)


def _safely(on_change: OnChange, name: str) -> None:
    # A model that fails to apply must not stop the listener for every other model.
    try:
        on_change(name)
    except ControlUnavailable:
        raise redis.ConnectionError("control state unreadable") from None
    except Exception:
        log.exception("applying the control state of model %s failed", name)
