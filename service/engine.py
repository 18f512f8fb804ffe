"""ONNX Runtime session for one model version: provider choice, padding buckets, IO binding, warm-up.

On CUDA a ranking model of this size is launch-bound (../shared/PERF-NOTES.md): time barely moves
from 1 to 1,000 candidates, so what counts is per-call overhead. There, batches are padded up to a
few bucket sizes, and each bucket gets its inputs and outputs allocated once on the device and
bound (IO binding): a request copies its rows in and its outputs out, and allocates nothing. The
buffers' addresses never change, which is what a CUDA graph (one per bucket, `cuda_graph`) needs.
On CPU none of that pays: a plain `session.run` on the request's own arrays, no padding.
"""

from __future__ import annotations

import logging
import threading
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
        return [CUDA, CPU]
    if device == "cuda":
        raise DeviceUnavailable(f"--device cuda, but this onnxruntime build offers only {available}")
    return [CPU]


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


def fixed_dims(arg: ort.NodeArg) -> list[int]:
    """The dimensions after the batch axis, which must be fixed to preallocate a buffer."""
    dims = list(arg.shape[1:])
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ValueError(f"{arg.name} has dynamic dimensions {arg.shape} past the batch axis: cannot bind it")
    return dims


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
    ):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        providers: list = choose_providers(device)
        if cuda_graph and providers[0] == CUDA:
            providers = [(CUDA, {"enable_cuda_graph": "1"}), CPU]
        self.session = ort.InferenceSession(onnx_path, options, providers=providers)
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
        return {"provider": self.provider, "io_binding": self.io_binding, "cuda_graph": self.cuda_graph,
                "buckets": list(self.buckets)}  # fmt: skip

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(inputs.values())))
        size = self._bucket(n)
        if size in self.bindings:
            outputs = self.bindings[size].run(self.session, inputs, n)
        else:
            if size != n:
                inputs = {k: np.concatenate([v, np.repeat(v[-1:], size - n, axis=0)]) for k, v in inputs.items()}
            outputs = [out[:n] for out in self.session.run(self.output_names, dict(inputs), self.plain_options)]
        return dict(zip(self.output_names, outputs))

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
            for _ in range(3 if self.cuda_graph else 1):  # ORT captures after a couple of plain runs
                self.run({k: v[index] for k, v in example.items()})
