"""KServe v2 / Triton inference protocol over the loaded models: raw per-task outputs, no ranking.

Lets Triton clients and perf tools (perf_analyzer, tritonclient) talk to the service. Tensors are
INT64 / FP32, data row-major (flat or nested lists); errors keep the service's one JSON shape.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.lifecycle.registry import ModelVersion
from service.problems import InvalidInput, TooLarge

DATATYPES = {"INT64": np.int64, "FP32": np.float32}
ACCEPTED_KINDS = {"INT64": "iu", "FP32": "iuf"}  # numpy dtype kinds the JSON data may have
ORT_TO_V2 = {"tensor(int64)": "INT64", "tensor(float)": "FP32"}


class InferInput(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: str
    shape: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, max_length=4)
    datatype: str
    data: list[Any]


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: Annotated[str, Field(max_length=128)] | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


def metadata(mv: ModelVersion, versions: list[int]) -> dict:
    def tensors(items):
        return [{"name": t.name, "datatype": ORT_TO_V2.get(t.type, t.type), "shape": [-1 if not isinstance(d, int) else d for d in t.shape]}
                for t in items]  # fmt: skip

    return {
        "name": mv.name,
        "versions": [str(v) for v in versions],
        "platform": "onnxruntime_onnx",
        "inputs": tensors(mv.engine.session.get_inputs()),
        "outputs": tensors(mv.engine.session.get_outputs()),
    }


def infer(mv: ModelVersion, req: InferRequest, max_batch: int) -> dict:
    declared = {i.name: i for i in mv.engine.session.get_inputs()}
    arrays: dict[str, np.ndarray] = {}
    for k, tensor in enumerate(req.inputs):
        field = f"inputs[{k}]"
        if tensor.name not in declared or tensor.name in arrays:
            raise InvalidInput("unknown_input", f"inputs are {sorted(declared)}; got {tensor.name!r} (or twice)", f"{field}.name")
        expected = ORT_TO_V2[declared[tensor.name].type]
        if tensor.datatype != expected:
            raise InvalidInput("wrong_datatype", f"{tensor.name} is {expected}", f"{field}.datatype")
        width = declared[tensor.name].shape[-1]
        if len(tensor.shape) != 2 or (isinstance(width, int) and tensor.shape[1] != width):
            raise InvalidInput("wrong_shape", f"{tensor.name} has shape [batch, {width}]", f"{field}.shape")
        if tensor.shape[0] > max_batch:
            raise TooLarge("batch_too_large", f"batch {tensor.shape[0]} over {max_batch}", f"{field}.shape")
        try:
            # Read as sent first: numpy would truncate 1.5 into an INT64 and parse "1" into an FP32.
            sent = np.asarray(tensor.data)
            if sent.size and sent.dtype.kind not in ACCEPTED_KINDS[expected]:
                raise TypeError(sent.dtype)
            array = sent.astype(DATATYPES[expected]).reshape(tensor.shape)
        except (ValueError, TypeError, OverflowError):
            raise InvalidInput("wrong_data", f"data does not fill shape {tensor.shape} with {expected}", f"{field}.data") from None
        if expected == "FP32" and not np.isfinite(array).all():
            raise InvalidInput("wrong_data", "data must be finite", f"{field}.data")
        arrays[tensor.name] = array
    if set(arrays) != set(declared):
        raise InvalidInput("missing_input", f"inputs {sorted(set(declared) - set(arrays))} are missing", "inputs")
    if len({a.shape[0] for a in arrays.values()}) != 1 or next(iter(arrays.values())).shape[0] == 0:
        raise InvalidInput("wrong_shape", "every input needs the same, non-zero batch size", "inputs")
    if "sparse_ids" in arrays:  # ids past an embedding table would fail inside ONNX Runtime
        limits = np.array(mv.transform.cardinalities())
        ids = arrays["sparse_ids"]
        outside = (ids < 0) | (ids >= limits)
        if outside.any():
            row, col = (int(i) for i in np.argwhere(outside)[0])
            k = next(k for k, t in enumerate(req.inputs) if t.name == "sparse_ids")
            raise InvalidInput("wrong_data", f"sparse_ids[{row}][{col}] is {ids[row, col]}; column {col} "
                           f"({mv.transform.sparse[col].name}) takes ids in [0, {limits[col]})", f"inputs[{k}].data")  # fmt: skip
    outputs = mv.engine.run(arrays)
    wanted = [o.name for o in req.outputs] if req.outputs else list(outputs)
    for k, name in enumerate(wanted):
        if name not in outputs:
            raise InvalidInput("unknown_output", f"outputs are {sorted(outputs)}", f"outputs[{k}].name")
    return {
        "model_name": mv.name,
        "model_version": str(mv.version),
        "id": req.id,
        "outputs": [{"name": n, "datatype": "FP32", "shape": list(outputs[n].shape), "data": outputs[n].ravel()} for n in wanted],
    }
