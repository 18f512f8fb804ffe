"""The KServe v2 / Triton protocol endpoints return the model's raw outputs."""

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from contract.features import FeatureTransform
from contract.modelspec import ModelSpec
from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def client(trained):
    settings = Settings(models_dir=trained.models_dir, features_dir=None, watch="off", max_candidates=50)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def inputs(trained):
    spec = ModelSpec.model_validate_json((trained.version_dir / "model.json").read_text())
    enc = FeatureTransform(spec.features).encode(3, shared={"age_bucket": "25-34", "hour": 7},
                                                 per_row={"video_id": ["v1", "v2", "v3"], "video_len": [3.0, 30.0, 300.0]})  # fmt: skip
    return enc.as_inputs()


def v2_body(inputs):
    return {"id": "req-1", "inputs": [
        {"name": "sparse_ids", "shape": list(inputs["sparse_ids"].shape), "datatype": "INT64",
         "data": inputs["sparse_ids"].ravel().tolist()},
        {"name": "dense", "shape": list(inputs["dense"].shape), "datatype": "FP32", "data": inputs["dense"].tolist()},
    ]}  # fmt: skip


def test_infer_returns_what_onnx_runtime_computes(client, trained, inputs):
    r = client.post("/v2/models/ple/infer", json=v2_body(inputs))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("ple", "1", "req-1")
    session = ort.InferenceSession(str(trained.version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    assert [o["name"] for o in body["outputs"]] == list(expected)
    for out in body["outputs"]:
        assert out["datatype"] == "FP32" and out["shape"] == [3]
        np.testing.assert_allclose(out["data"], expected[out["name"]], rtol=1e-6)


def test_requested_outputs_only(client, inputs):
    body = {**v2_body(inputs), "outputs": [{"name": "vcr"}]}
    assert [o["name"] for o in client.post("/v2/models/ple/versions/1/infer", json=body).json()["outputs"]] == ["vcr"]


def test_metadata_and_readiness(client):
    meta = client.get("/v2/models/ple").json()
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"sparse_ids": "INT64", "dense": "FP32"}
    assert {o["name"] for o in meta["outputs"]} == {"ctr", "vtr", "vcr", "shr", "cmr"}
    assert client.get("/v2/models/ple/ready").json()["ready"] is True
    assert client.get("/v2/models/ple/versions/1/ready").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/nope").status_code == 404
    assert client.get("/v2/models/ple/versions/9/ready").status_code == 404


@pytest.mark.parametrize(
    "edit, status, field",
    [
        (lambda b: b["inputs"][0].update(datatype="FP32"), 422, "inputs[0].datatype"),
        (lambda b: b["inputs"][1].update(shape=[3, 99]), 422, "inputs[1].shape"),
        (lambda b: b["inputs"][1].update(data=[1.0, 2.0]), 422, "inputs[1].data"),
        (lambda b: b["inputs"][1].update(data=["x"] * 12), 422, "inputs[1].data"),
        (lambda b: b["inputs"].pop(), 422, "inputs"),
        (lambda b: b["inputs"][0].update(name="ids"), 422, "inputs[0].name"),
        (lambda b: b["inputs"][0].update(data=[10**9] * len(b["inputs"][0]["data"])), 422, "inputs[0].data"),
        (lambda b: b["inputs"][0].update(data=[1.5] * len(b["inputs"][0]["data"])), 422, "inputs[0].data"),
        (lambda b: b["inputs"][1].update(data=[str(x) for x in b["inputs"][1]["data"]]), 422, "inputs[1].data"),
        (lambda b: b["inputs"][1].update(shape=[True, b["inputs"][1]["shape"][1]]), 422, "inputs[1].shape[0]"),
        (lambda b: b.update(outputs=[{"name": "likes"}]), 422, "outputs[0].name"),
        (lambda b: [t.update(shape=[60, t["shape"][1]], data=t["data"] * 20) for t in b["inputs"]], 413, "inputs[0].shape"),
    ],
)
def test_bad_tensors_are_clear_4xx(client, inputs, edit, status, field):
    body = v2_body(inputs)
    edit(body)
    r = client.post("/v2/models/ple/infer", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field
