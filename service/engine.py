"""ONNX Runtime session for one model version: provider choice, padding buckets, warm-up."""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import onnxruntime as ort

log = logging.getLogger("ranker.engine")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


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


class InferenceEngine:
    """Runs a batch through one ONNX model. Thread-safe: ORT sessions allow concurrent run()."""

    def __init__(
        self,
        onnx_path: str,
        device: str = "auto",
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        batch_buckets: Sequence[int] = (),
    ):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        self.session = ort.InferenceSession(onnx_path, options, providers=choose_providers(device))
        self.provider = self.session.get_providers()[0]
        # Padding only pays on CUDA (repeated shapes); on CPU it would only add work.
        self.buckets = sorted(batch_buckets) if self.provider == CUDA else []
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(inputs.values())))
        size = self._bucket(n)
        if size != n:
            inputs = {k: np.concatenate([v, np.repeat(v[-1:], size - n, axis=0)]) for k, v in inputs.items()}
        outputs = self.session.run(self.output_names, dict(inputs))
        return {name: out[:n] for name, out in zip(self.output_names, outputs)}

    def _bucket(self, n: int) -> int:
        for size in self.buckets:
            if n <= size:
                return size
        return n

    def warm_up(self, example: Mapping[str, np.ndarray], sizes: Sequence[int]) -> None:
        """Run each size once so the first real request does not pay for lazy initialisation."""
        for size in sizes or [1]:
            index = np.arange(size) % len(next(iter(example.values())))
            self.run({k: v[index] for k, v in example.items()})
