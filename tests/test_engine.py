"""Provider choice and the engine's batch handling."""

import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.lifecycle.engine import CPU, CUDA, DeviceUnavailable, InferenceEngine, choose_providers, usable_cores
from service.settings import Settings
from tests.conftest import BIN

HAS_CUDA = CUDA in ort.get_available_providers()


def test_auto_falls_back_to_cpu_without_a_cuda_build():
    expected = [CUDA, CPU] if HAS_CUDA else [CPU]
    assert choose_providers("auto") == expected
    assert choose_providers("cpu") == [CPU]


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime build has CUDA")
def test_device_cuda_without_cuda_refuses_to_start(trained):
    with pytest.raises(DeviceUnavailable):
        choose_providers("cuda")
    out = subprocess.run([BIN / "ranker-serve", "--models", trained.models_dir, "--device", "cuda", "--port", "0"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode != 0
    assert "--device cuda" in out.stdout + out.stderr


def test_padding_buckets_do_not_change_results(trained):
    onnx_path = str(trained.version_dir / "model.onnx")
    plain = InferenceEngine(onnx_path, device="cpu")
    padded = InferenceEngine(onnx_path, device="cpu")
    padded.buckets = [4, 16]  # what the CUDA path does: pad to a bucket, slice back
    rng = np.random.default_rng(0)
    for n in (1, 3, 7, 20):
        inputs = {"sparse_ids": rng.integers(0, 2, (n, 10)), "dense": rng.normal(size=(n, 4)).astype(np.float32)}
        a, b = plain.run(inputs), padded.run(inputs)
        assert all(b[k].shape == (n,) for k in b)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6)


def test_io_binding_gives_the_plain_results_at_every_size(trained):
    """The bound path (preallocated per-bucket buffers, what CUDA uses) run here on CPU buffers."""
    onnx_path = str(trained.version_dir / "model.onnx")
    plain = InferenceEngine(onnx_path, device="cpu")
    bound = InferenceEngine(onnx_path, device="cpu", batch_buckets=[4, 16], io_binding="on")
    assert bound.io_binding and sorted(bound.bindings) == [4, 16] and not plain.bindings
    rng = np.random.default_rng(1)
    for n in (1, 3, 4, 7, 16, 20):  # below, at and past the buckets (20: a plain run)
        inputs = {"sparse_ids": rng.integers(0, 2, (n, 10)), "dense": rng.normal(size=(n, 4)).astype(np.float32)}
        a, b = plain.run(inputs), bound.run(inputs)
        for k in a:
            assert b[k].shape == a[k].shape
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
    # A smaller request after a larger one in the same bucket sees none of the earlier rows.
    big = {"sparse_ids": np.ones((16, 10), np.int64), "dense": np.full((16, 4), 3.0, np.float32)}
    small = {"sparse_ids": np.zeros((2, 10), np.int64), "dense": np.zeros((2, 4), np.float32)}
    bound.run(big)
    for k, v in bound.run(small).items():
        np.testing.assert_allclose(v, plain.run(small)[k], rtol=1e-6)


def assert_same_under_concurrency(reference: InferenceEngine, engine: InferenceEngine, sizes, threads: int,
                                  seed: int, rtol: float = 1e-6, atol: float = 0.0) -> None:  # fmt: skip
    """Random batches run one by one on `reference` and concurrently on `engine` give the same outputs."""
    rng = np.random.default_rng(seed)
    batches = [{"sparse_ids": rng.integers(0, 2, (n, 10)), "dense": rng.normal(size=(n, 4)).astype(np.float32)}
               for n in sizes(rng)]  # fmt: skip
    expected = [reference.run(b) for b in batches]
    with ThreadPoolExecutor(threads) as pool:
        got = list(pool.map(engine.run, batches))
    for e, g in zip(expected, got):
        for k in e:
            np.testing.assert_allclose(e[k], g[k], rtol=rtol, atol=atol)


def test_io_binding_is_safe_under_concurrent_requests(trained):
    onnx_path = str(trained.version_dir / "model.onnx")
    plain = InferenceEngine(onnx_path, device="cpu")
    bound = InferenceEngine(onnx_path, device="cpu", batch_buckets=[8, 32], io_binding="on")
    assert_same_under_concurrency(plain, bound, lambda rng: rng.integers(1, 33, 64), threads=8, seed=2)


def test_a_call_that_starts_while_another_runs_gets_the_one_thread_session(trained):
    """Adaptive threads on CPU: a lone call uses every core, concurrent calls one core each."""
    engine = InferenceEngine(str(trained.version_dir / "model.onnx"), device="cpu", intra_op_threads=2)
    assert engine.narrow is not None and engine.describe()["cpu_threads"] == "adaptive"
    with engine._plain_session() as first:
        with engine._plain_session() as second:
            assert first is engine.session and second is engine.narrow
    with engine._plain_session() as again:  # both finished: the wide session again
        assert again is engine.session
    for fixed in (InferenceEngine(str(trained.version_dir / "model.onnx"), device="cpu", intra_op_threads=1),
                  InferenceEngine(str(trained.version_dir / "model.onnx"), device="cpu", intra_op_threads=2, adaptive_threads=False),
                  InferenceEngine(str(trained.version_dir / "model.onnx"), device="cpu", intra_op_threads=2, io_binding="on")):  # fmt: skip
        assert fixed.narrow is None and fixed.describe()["cpu_threads"] == "fixed"


def test_with_worker_processes_a_call_is_alone_only_when_no_worker_has_one_in_flight(trained, monkeypatch):
    """RANKER_WORKERS > 1: the workers share their calls in flight (service.workers.CallsInFlight),
    so a call takes the wide session only while every worker is idle; a replaced worker's slot is
    reset by the supervisor."""
    import multiprocessing

    from service.lifecycle import engine as engine_module
    from service.workers import CallsInFlight

    slots = multiprocessing.get_context("spawn").Array("i", 2)
    monkeypatch.setattr(engine_module, "machine_calls", CallsInFlight(slots, 0))
    engine = InferenceEngine(str(trained.version_dir / "model.onnx"), device="cpu", intra_op_threads=2)
    with engine._plain_session() as session:
        assert session is engine.session and list(slots) == [1, 0]
    other_worker = CallsInFlight(slots, 1)
    assert other_worker.enter()  # the other worker's call, alone when it started
    with engine._plain_session() as session:
        assert session is engine.narrow and list(slots) == [1, 1]
    other_worker.leave()
    with engine._plain_session() as session:
        assert session is engine.session
    assert list(slots) == [0, 0]


def test_with_worker_processes_a_small_batch_runs_on_one_thread_even_alone(trained, monkeypatch):
    """RANKER_WIDE_CALL_MIN_ROWS: with worker processes a batch below it takes the one-thread session
    though no worker has a call in flight (and is still counted); a lone process ignores it."""
    import multiprocessing

    from service.lifecycle import engine as engine_module
    from service.workers import CallsInFlight

    path = str(trained.version_dir / "model.onnx")
    alone = InferenceEngine(path, device="cpu", intra_op_threads=2, wide_call_min_rows=50)
    with alone._plain_session(10) as session:  # one process: the other core is free
        assert session is alone.session
    slots = multiprocessing.get_context("spawn").Array("i", 2)
    monkeypatch.setattr(engine_module, "machine_calls", CallsInFlight(slots, 0))
    engine = InferenceEngine(path, device="cpu", intra_op_threads=2, wide_call_min_rows=50)
    with engine._plain_session(49) as session:
        assert session is engine.narrow and list(slots) == [1, 0]
    with engine._plain_session(50) as session:
        assert session is engine.session
    assert list(slots) == [0, 0]
    narrow_calls = []
    narrow_run = engine.narrow.run
    monkeypatch.setattr(engine.narrow, "run", lambda *a, **k: narrow_calls.append(1) or narrow_run(*a, **k))
    rng = np.random.default_rng(4)
    for n in (49, 50):  # run() goes by the batch's rows
        engine.run({"sparse_ids": rng.integers(0, 2, (n, 10)), "dense": rng.normal(size=(n, 4)).astype(np.float32)})
    assert len(narrow_calls) == 1
    app = create_app(Settings(models_dir=trained.models_dir, features_dir=trained.features_dir, watch="off",
                              wide_call_min_rows=7))  # fmt: skip
    with TestClient(app):  # the setting reaches every loaded version's engine
        assert app.state.registry.resolve(None, None, "u1")[0].engine.wide_call_min_rows == 7


def test_adaptive_threads_give_the_same_scores_under_concurrency(trained):
    onnx_path = str(trained.version_dir / "model.onnx")
    fixed = InferenceEngine(onnx_path, device="cpu", adaptive_threads=False)
    adaptive = InferenceEngine(onnx_path, device="cpu", intra_op_threads=2)
    assert_same_under_concurrency(fixed, adaptive, lambda rng: rng.integers(1, 300, 48), threads=6, seed=3, rtol=1e-5, atol=1e-7)
    assert adaptive._running == 0
    with pytest.raises(Exception):  # a failing call must not leave the engine thinking one is running
        adaptive.run({"sparse_ids": np.zeros((2, 3), np.int64), "dense": np.zeros((2, 4), np.float32)})
    assert adaptive._running == 0


def test_the_provider_in_use_is_reported(trained):
    with TestClient(create_app(Settings(models_dir=trained.models_dir, features_dir=None, watch="off"))) as c:
        listed = c.get("/v1/models").json()["models"][0]
        assert listed["provider"] == (CUDA if HAS_CUDA else CPU)
        assert listed["io_binding"] is HAS_CUDA and listed["cuda_graph"] is False  # auto: bound on CUDA only
        assert listed["cpu_threads"] == ("fixed" if HAS_CUDA or usable_cores() == 1 else "adaptive")
        one = c.get("/v1/models/ple").json()
        assert one["name"] == "ple" and one["versions"][0]["features"][0]["name"] == "user_id"
        assert one["versions"][0]["video_len_transform"]["kind"] == "log"
        assert c.get("/v1/models/nope").status_code == 404
