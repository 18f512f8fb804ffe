"""ONNX Runtime session for one model version: provider choice, padding buckets, IO binding, warm-up.

On CUDA a ranking model of this size is launch-bound (docs/performance.md): time barely moves
from 1 to 1,000 candidates, so what counts is per-call overhead. There, batches are padded up to a
few bucket sizes, and each bucket gets its inputs and outputs allocated once on the device and
bound (IO binding): a request copies its rows in and its outputs out, and allocates nothing. The
buffers' addresses never change, which is what a CUDA graph (one per bucket, `cuda_graph`) needs.
On CPU none of that pays: a plain `session.run` on the request's own arrays, no padding. There
the question is threads instead: a lone request is fastest with every core on its one call, but two
concurrent requests with every core each oversubscribe the cores and lose ~30 % of the throughput of
one core each. So on CPU (`adaptive_threads`) a second session with one intra-op thread serves the
calls that start while another call is running: sequential latency of the wide session, saturated
throughput of the narrow one (bench/README.md has the figures).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from contextlib import contextmanager
from typing import Literal, Mapping, Sequence

import numpy as np
import onnxruntime as ort

log = logging.getLogger("ranker.engine")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
               "tensor(double)": np.float64, "tensor(bool)": np.bool_}  # fmt: skip


class DeviceUnavailable(RuntimeError):
    pass


def choose_providers(device: str) -> list[str]:
    """auto: CUDA when this onnxruntime build has it, else CPU. cuda: CUDA or an error."""
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        load_cuda_libraries()
        return [CUDA, CPU]
    if device == "cuda":
        raise DeviceUnavailable(f"--device cuda, but this onnxruntime build offers only {available}")
    return [CPU]


@functools.cache
def load_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that pip installed beside torch (nvidia-* packages), once.

    onnxruntime-gpu links against them but does not look in site-packages by itself: without this
    (or LD_LIBRARY_PATH) its CUDA provider fails to load and the session quietly falls back to CPU."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # libraries on LD_LIBRARY_PATH or the system path still work
        log.warning("onnxruntime.preload_dlls failed (%s); relying on the library path", exc)


class BucketBinding:
    """One bucket's inputs and outputs, allocated once on the session's device and bound.

    A request copies its n rows into the host staging arrays (padding the rest with its last row),
    the staging is copied to the device buffers in place, the session runs on the bound buffers and
    the outputs are copied back and sliced to n rows. One request at a time per bucket (the lock):
    the GPU runs one call at a time anyway, and a CUDA graph replays these exact buffers.
    """

    def __init__(self, session: ort.InferenceSession, size: int, device: str, graph_id: int | None):
        self.size = size
        self.lock = threading.Lock()
        self.host = {i.name: np.zeros((size, *fixed_dims(i)), dtype=NUMPY_TYPES[i.type]) for i in session.get_inputs()}
        self.inputs = {name: ort.OrtValue.ortvalue_from_numpy(a, device, 0) for name, a in self.host.items()}
        self.outputs = {o.name: ort.OrtValue.ortvalue_from_shape_and_type([size, *fixed_dims(o)], NUMPY_TYPES[o.type], device, 0)
                        for o in session.get_outputs()}  # fmt: skip
        self.binding = session.io_binding()
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        for name, value in self.outputs.items():
            self.binding.bind_ortvalue_output(name, value)
        self.run_options = ort.RunOptions()
        if graph_id is not None:  # ORT keeps one captured graph per id; 0 is reserved, -1 means "no graph"
            self.run_options.add_run_config_entry("gpu_graph_id", str(graph_id))

    def run(self, session: ort.InferenceSession, inputs: Mapping[str, np.ndarray], n: int) -> list[np.ndarray]:
        with self.lock:
            for name, host in self.host.items():
                rows = inputs[name]
                host[:n] = rows
                host[n:] = rows[n - 1 : n]  # padding repeats a real row: no NaN or out-of-range id reaches the model
                self.inputs[name].update_inplace(host)
            session.run_with_iobinding(self.binding, self.run_options)
            return [out[:n] for out in self.binding.copy_outputs_to_cpu()]


def session_options(intra_op_threads: int, inter_op_threads: int, spin: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def fixed_dims(arg: ort.NodeArg) -> list[int]:
    """The dimensions after the batch axis, which must be fixed to preallocate a buffer."""
    dims = list(arg.shape[1:])
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ValueError(f"{arg.name} has dynamic dimensions {arg.shape} past the batch axis: cannot bind it")
    return dims


# With RANKER_WORKERS > 1: the workers' shared count of calls in flight (service.workers.CallsInFlight),
# set in each worker before its app starts; None in a lone process.
machine_calls = None


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class InferenceEngine:
    """Runs a batch through one ONNX model. Thread-safe: ORT sessions allow concurrent run()."""

    def __init__(
        self,
        onnx_path: str,
        device: str = "auto",
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        batch_buckets: Sequence[int] = (),
        io_binding: Literal["auto", "on", "off"] = "auto",
        cuda_graph: bool = False,
        adaptive_threads: bool = True,
        wide_call_min_rows: int = 0,
    ):
        providers: list = choose_providers(device)
        if cuda_graph and providers[0] == CUDA:
            providers = [(CUDA, {"enable_cuda_graph": "1"}), CPU]
        wide = intra_op_threads or usable_cores()  # 0: ORT picks one per physical core
        adaptive = adaptive_threads and providers == [CPU] and io_binding != "on" and wide > 1
        # Spinning threads keep a core busy after each call; with a narrow session beside it that
        # core is better left to the other requests' Python (parse, features, encode).
        wide_options = session_options(intra_op_threads, inter_op_threads, spin=not adaptive)
        self.session = ort.InferenceSession(onnx_path, wide_options, providers=providers)
        self.narrow = None  # the one-thread session for overlapping calls
        if adaptive:
            self.narrow = ort.InferenceSession(onnx_path, session_options(1, inter_op_threads), providers=[CPU])
        self.wide_call_min_rows = wide_call_min_rows  # with worker processes only (see _plain_session)
        self._running = 0  # calls in flight on the plain path (picks wide or narrow)
        self._running_lock = threading.Lock()
        self.provider = self.session.get_providers()[0]
        on_cuda = self.provider == CUDA
        self.cuda_graph = bool(cuda_graph and on_cuda)
        # Padding only pays on CUDA (repeated shapes); on CPU it would only add work. io_binding="on"
        # binds on CPU too (tests run the bound path here; it serialises requests per bucket).
        self.io_binding = io_binding == "on" or (io_binding == "auto" and on_cuda) or self.cuda_graph
        self.buckets = sorted(batch_buckets) if on_cuda or self.io_binding else []
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.bindings: dict[int, BucketBinding] = {}
        if self.io_binding:
            device_name = "cuda" if on_cuda else "cpu"
            self.bindings = {size: BucketBinding(self.session, size, device_name, k + 1 if self.cuda_graph else None)
                             for k, size in enumerate(self.buckets)}  # fmt: skip
        # Past the largest bucket: a plain run (with a graph session, one that captures no graph).
        self.plain_options = ort.RunOptions()
        if self.cuda_graph:
            self.plain_options.add_run_config_entry("gpu_graph_id", "-1")

    def describe(self) -> dict:
        threads = "adaptive" if self.narrow is not None else "fixed"
        return {"provider": self.provider, "io_binding": self.io_binding, "cuda_graph": self.cuda_graph,
                "buckets": list(self.buckets), "cpu_threads": threads}  # fmt: skip

    def run_background(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A call no client waits for (a shadow version's): on the one-thread session where there is
        one, so it takes one core at most and leaves the others to the requests being served."""
        if self.narrow is None:
            return self.run(inputs)
        return dict(zip(self.output_names, self.narrow.run(self.output_names, dict(inputs))))

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(inputs.values())))
        size = self._bucket(n)
        if size in self.bindings:
            outputs = self.bindings[size].run(self.session, inputs, n)
        else:
            if size != n:
                inputs = {k: np.concatenate([v, np.repeat(v[-1:], size - n, axis=0)]) for k, v in inputs.items()}
            with self._plain_session(size) as session:
                outputs = [out[:n] for out in session.run(self.output_names, dict(inputs), self.plain_options)]
        return dict(zip(self.output_names, outputs))

    @contextmanager
    def _plain_session(self, rows: int = 0):
        """The wide session when no other call is running (in this process; with worker processes,
        in any of them: `machine_calls`), else the one-thread session.

        With worker processes, a batch of fewer than `wide_call_min_rows` rows takes the one-thread
        session even alone: the other cores belong to the other workers' Python, and a second thread
        speeds up a small batch least (1.29x at 100 rows for 20 % more CPU, bench/results/ort_threads.json).
        At 100 candidates two workers answered 1.06-1.27x the req/s with it than without, at less CPU
        per request (bench/results/compare_servers_wide_min_rows.json)."""
        with self._running_lock:
            alone = self._running == 0
            self._running += 1
        shared = machine_calls if self.narrow is not None else None
        if shared is not None:
            alone = shared.enter() and alone and rows >= self.wide_call_min_rows
        try:
            yield self.session if alone or self.narrow is None else self.narrow
        finally:
            if shared is not None:
                shared.leave()
            with self._running_lock:
                self._running -= 1

    def _bucket(self, n: int) -> int:
        for size in self.buckets:
            if n <= size:
                return size
        return n

    def warm_up(self, example: Mapping[str, np.ndarray], sizes: Sequence[int]) -> None:
        """Run each size once so the first real request does not pay for lazy initialisation
        (with CUDA graphs: the first runs of a bucket capture its graph)."""
        for size in sizes or [1]:
            index = np.arange(size) % len(next(iter(example.values())))
            batch = {k: v[index] for k, v in example.items()}
            for _ in range(3 if self.cuda_graph else 1):  # ORT captures after a couple of plain runs
                self.run(batch)
            if self.narrow is not None:
                self.narrow.run(self.output_names, batch)
