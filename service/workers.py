"""Several serving processes on one port (RANKER_WORKERS > 1): a supervisor and its workers.

Why processes: the rank route's Python (parse, features, scoring, JSON) holds the GIL, so one
process keeps one core busy with Python however many threads it has; N processes use N cores.
Each worker is a whole app, a replica of the others: it loads every model itself, follows the Redis
control plane for routing (so an admin call answered by any worker reaches all of them), runs its
own watcher, and writes its metrics to PROMETHEUS_MULTIPROC_DIR, where every worker's /metrics
sums them (service.observability.metrics).

The supervisor binds the socket once, starts the workers (spawned, so each imports the service
afresh), starts a new one when one dies, and stops them all on SIGTERM or SIGINT (each drains its
requests in flight first) and exits 0; a worker that cannot start (a bad model folder, Redis
unreachable at start) stops the supervisor with status 1 instead of restarting forever.

Connections are spread by `FairListener`. All workers wait on the one listening socket, and
whichever wakes first would take every connection that is waiting: a load balancer's or a client's
few keep-alive connections, opened together, could all land on one worker and leave the other
cores idle (measured here before this: 2 and 4 connections on one of two workers in 3 of 6 runs).
So a worker that holds k more connections than the least-loaded worker waits k milliseconds (at
most MAX_DEFER_S) before it accepts: a worker holding fewer takes the connection first, like
nginx's accept_mutex_delay. The workers publish what they hold in shared memory (WorkerSlots).
Deferring by the whole count instead made every accept of a worker holding 4 or more connections
wait 4 ms on its event loop: in a connection storm (a load generator opened 6,147) the workers
spent their time waiting to accept and answered half the requests asked (docs/performance.md).

The workers run on uvloop, whose event loop took a smaller share of a loaded worker's CPU than
asyncio's own (21-25 % against 27 % of the busy samples, docs/performance.md "uvloop in the
workers"; the served gain was within the host's noise). uvloop accepts in C, taking every waiting
connection and never calling FairListener.accept, so `FairAcceptLoop` serves a FairListener itself:
it accepts in Python, through FairListener.accept, and hands each connection to uvloop. Without
uvloop the workers run on asyncio's loop, which accepts through FairListener.accept already.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import uvicorn
from prometheus_client.multiprocess import mark_process_dead

log = logging.getLogger("ranker.workers")

DEFER_PER_CONNECTION_S = 0.001
MAX_DEFER_S = 0.004
RECENT_S = 0.05  # accepted this recently: maybe not registered with the server yet
STARTUP_FAILURE = 3  # uvicorn's exit status when a worker's app did not start
STOP_GRACE_S = 60.0  # a worker still draining after this is killed


class WorkerSlots:
    """One integer per worker in shared memory, and this worker's slot: what every worker holds."""

    def __init__(self, slots, slot: int):
        self.slots, self.slot = slots, slot

    def others_least(self) -> int:
        """The least any other worker holds (as it last published), or 0 without others."""
        with self.slots.get_lock():
            values = self.slots.get_obj()
            return min((v for i, v in enumerate(values) if i != self.slot), default=0)

    def publish(self, value: int) -> None:
        self.slots[self.slot] = value


class CallsInFlight(WorkerSlots):
    """Inference calls in flight across the workers, in shared memory: each worker adds to its own
    slot, and a call takes ONNX Runtime's wide session only when every slot is 0 (the engine's
    adaptive threads, machine-wide). Counted per process only, each worker would call wide whenever
    it had no other call, and under load the workers' wide calls would put two threads per worker
    on the cores: a 100-candidate request cost 1.30 CPU ms with two ORT threads against 1.08 with
    one (bench/results/asgi_cpu.json)."""

    def enter(self) -> bool:
        """Count a call; True when no other call was in flight on any worker."""
        with self.slots.get_lock():
            alone = not any(self.slots.get_obj())
            self.slots[self.slot] += 1
        return alone

    def leave(self) -> None:
        with self.slots.get_lock():
            self.slots[self.slot] -= 1


class FairListener(socket.socket):
    """The shared listening socket as one worker sees it: accept() defers by the connections this
    worker holds beyond the least-loaded other worker, so the worker holding the fewest takes a new
    connection, and workers holding alike accept at once."""

    held: Callable[[], int] = staticmethod(lambda: 0)
    recent: deque[float]
    shared: WorkerSlots | None = None

    @classmethod
    def of(cls, sock: socket.socket, held: Callable[[], int], shared: WorkerSlots | None = None) -> FairListener:
        listener = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        listener.held, listener.recent, listener.shared = held, deque(), shared
        return listener

    def deferral(self, held: int) -> float:
        """Seconds to wait before accepting, holding `held` connections: 1 ms per connection beyond
        the least-loaded other worker (beyond none in a lone listener), at most MAX_DEFER_S."""
        excess = held - (self.shared.others_least() if self.shared is not None else 0)
        return min(excess * DEFER_PER_CONNECTION_S, MAX_DEFER_S) if excess > 0 else 0.0

    def accept(self):
        # asyncio accepts a burst of waiting connections in one go, before any of them is registered
        # with the server: the ones accepted in the last RECENT_S count as held too.
        now = time.monotonic()
        while self.recent and now - self.recent[0] > RECENT_S:
            self.recent.popleft()
        held = self.held() + len(self.recent)
        wait = self.deferral(held)
        if wait:
            time.sleep(wait)
        conn, address = super().accept()  # BlockingIOError when a worker holding fewer took it meanwhile
        self.recent.append(time.monotonic())
        if self.shared is not None:
            self.shared.publish(held + 1)
        # asyncio turns Nagle off only for sockets whose proto says TCP; an inherited listener's
        # accepted sockets say 0. With Nagle on, small answers waited ~40 ms for delayed ACKs.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, address


ACCEPT_BURST = 100  # connections accepted per wake-up at most, as asyncio's loop does (its backlog)
ACCEPT_RETRY_S = 1.0  # out of file descriptors: accept again after this, as asyncio's loop does


class FairServer:
    """A FairListener served on a uvloop loop: what uvicorn uses of an asyncio.Server (close,
    wait_closed), accepting through FairListener.accept and handing each connection to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol_factory: Callable[[], asyncio.Protocol],
                 sock: FairListener):  # fmt: skip
        self.loop, self.protocol_factory, self.sock = loop, protocol_factory, sock
        self.closed = False
        self.handshakes: set[asyncio.Task] = set()  # connections being handed over (kept referenced)
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # none left, or a worker holding fewer took it
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: pause, as asyncio's loop does
                log.error("accept failed (%s); accepting again in %.0f s", exc, ACCEPT_RETRY_S)
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(ACCEPT_RETRY_S, self._resume)
                return
            task = self.loop.create_task(self.loop.connect_accepted_socket(self.protocol_factory, conn))
            self.handshakes.add(task)
            task.add_done_callback(self._handed_over)

    def _handed_over(self, task: asyncio.Task) -> None:
        self.handshakes.discard(task)
        if not task.cancelled() and task.exception() is not None:  # e.g. reset before it was set up
            log.warning("a connection could not be set up: %r", task.exception())

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())

    async def wait_closed(self) -> None:
        return None


try:
    import uvloop

    class FairAcceptLoop(uvloop.Loop):
        """uvloop, except that a FairListener is served by FairServer (accepting in Python)."""

        async def create_server(self, protocol_factory, host=None, port=None, *, sock=None, **kwargs):
            if isinstance(sock, FairListener):
                return FairServer(self, protocol_factory, sock)
            return await super().create_server(protocol_factory, host, port, sock=sock, **kwargs)

    UVLOOP = "service.workers:FairAcceptLoop"  # uvicorn calls it to make the worker's loop
except ImportError:  # uvloop is Linux and macOS only
    UVLOOP = "asyncio"


def uvicorn_loop(worker_loop: str) -> str:
    """uvicorn's `loop` for the workers of Settings.worker_loop."""
    return UVLOOP if worker_loop == "uvloop" else "asyncio"


def run_worker(sock: socket.socket, config_kwargs: dict, calls: CallsInFlight, connections: WorkerSlots) -> None:
    """One worker process: the app from service.cli.worker_app on the shared socket."""
    from service.cli import QuietTermServer
    from service.lifecycle import engine

    engine.machine_calls = calls  # every engine this worker loads counts its calls there

    config = uvicorn.Config("service.cli:worker_app", factory=True, **config_kwargs)
    server = QuietTermServer(config)
    listener = FairListener.of(sock, lambda: len(server.server_state.connections), connections)
    server.run(sockets=[listener])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


class Supervisor:
    def __init__(self, workers: int, host: str, port: int, config_kwargs: dict, metrics_dir: Path):
        self.workers, self.config_kwargs, self.metrics_dir = workers, config_kwargs, metrics_dir
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(2048)
        self.context = multiprocessing.get_context("spawn")
        self.calls = self.context.Array("i", workers)  # inference calls in flight, one slot per worker
        self.connections = self.context.Array("i", workers)  # connections each worker holds (FairListener)
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.stopping = False

    def _start_one(self, slot: int) -> multiprocessing.process.BaseProcess:
        self.calls[slot] = self.connections[slot] = 0  # what a killed worker left behind
        shared = (CallsInFlight(self.calls, slot), WorkerSlots(self.connections, slot))
        process = self.context.Process(target=run_worker, args=(self.sock, self.config_kwargs, *shared),
                                       name="ranker-worker")  # fmt: skip
        process.start()
        return process

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        host, port = self.sock.getsockname()[:2]
        log.info("ranker-serve on http://%s:%d with %d worker processes (supervisor %d)", host, port, self.workers,
                 os.getpid())  # fmt: skip
        self.processes = [self._start_one(slot) for slot in range(self.workers)]
        status = 0
        while not self.stopping:
            time.sleep(0.2)
            for i, process in enumerate(self.processes):
                if process.is_alive() or self.stopping:
                    continue
                mark_process_dead(process.pid, str(self.metrics_dir))  # its in-flight gauge leaves the sum
                if process.exitcode == STARTUP_FAILURE:
                    log.error("worker %d could not start (its log says why); stopping", process.pid)
                    self.stopping, status = True, 1
                    break
                log.error("worker %d exited with %s; starting another", process.pid, process.exitcode)
                self.processes[i] = self._start_one(i)
        self._stop_all()
        return status

    def _stop_all(self) -> None:
        for process in self.processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)  # each drains its requests in flight, then exits
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker %d still running after %.0f s; killing it", process.pid, STOP_GRACE_S)
                process.kill()
                process.join()
        self.sock.close()
