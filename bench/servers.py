"""How each server bench/compare_servers.py compares is started, stopped and found ready: the
command, its environment and its settings in words. Peers run from their own virtual environments
(bench/setup_peers.sh, in bench/.venvs/)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.common import BIN, ROOT, delete_keys, free_port

VENVS = ROOT / "bench" / ".venvs"
CACHE = ROOT / "bench" / ".cache"
ALL = ("ple-ranker", "ple-ranker-pool", "ple-ranker-wide", "ple-ranker-1t", "ple-ranker-2w", "ple-ranker-2w-pool",
       "ple-ranker-2w-1t", "ple-ranker-2w-rows0", "ple-ranker-2w-asyncio", "ple-ranker-nocache",
       "ple-ranker-2w-nocache", "fastapi-ort", "fastapi-torch", "bentoml", "torchserve", "ple-ranker-int8",
       "ple-ranker-2w-int8")  # fmt: skip

SETTINGS = {
    "ple-ranker": "ranker-serve: 1 uvicorn process, the rank on the event loop (RANKER_RANK_THREAD=loop), "
    "ONNX Runtime intra_op_threads=0 (one per core = 2) for a lone call, "
    "adaptive threads: a call that starts while another runs uses a one-thread session",
    "ple-ranker-pool": "as ple-ranker with RANKER_RANK_THREAD=pool: the rank in the thread pool (the design before)",
    "ple-ranker-wide": "as ple-ranker with RANKER_ADAPTIVE_THREADS=false: every call on two ORT threads "
    "(the default before adaptive threads)",
    "ple-ranker-1t": "as ple-ranker with RANKER_INTRA_OP_THREADS=1: every call on one ORT thread",
    "ple-ranker-2w": "ranker-serve with RANKER_WORKERS=2: two worker processes on one socket, each with ORT's default "
    "threads and adaptive threads like ple-ranker (a call alone on the machine uses two threads from "
    "RANKER_WIDE_CALL_MIN_ROWS=256 candidates), routing through the Redis control plane, feature tables in "
    "process (RANKER_FEATURE_STORE=embedded)",
    "ple-ranker-2w-pool": "as ple-ranker-2w with RANKER_RANK_THREAD=pool: the rank in each worker's thread pool",
    "ple-ranker-2w-1t": "as ple-ranker-2w with RANKER_INTRA_OP_THREADS=1: one ORT thread per worker",
    "ple-ranker-2w-rows0": "as ple-ranker-2w with RANKER_WIDE_CALL_MIN_ROWS=0: a call alone on the machine uses two "
    "ORT threads at every batch size (the design before)",
    "ple-ranker-2w-asyncio": "as ple-ranker-2w with RANKER_WORKER_LOOP=asyncio: the workers on asyncio's own event "
    "loop, not uvloop (the design before)",
    "ple-ranker-nocache": "as ple-ranker with RANKER_ITEM_CACHE_ROWS=0: every candidate's features encoded per request",
    "ple-ranker-2w-nocache": "as ple-ranker-2w with RANKER_ITEM_CACHE_ROWS=0",
    "ple-ranker-int8": "as ple-ranker, serving the int8 version of the model (ranker-quantize, dynamic)",
    "ple-ranker-2w-int8": "as ple-ranker-2w, serving the int8 version of the model (ranker-quantize, dynamic)",
    "fastapi-ort": "uvicorn --workers 2, FastAPI + ONNX Runtime intra_op_num_threads=1 per worker, the same "
    "RankingCore (feature tables in process) and model.onnx as ple-ranker, ORJSONResponse",
    "fastapi-torch": "uvicorn --workers 2 (one process per core), torch.set_num_threads(1) per worker, "
    "torch.inference_mode, ORJSONResponse",
    "bentoml": "bentoml serve, @bentoml.service(workers=2), ONNX Runtime intra_op_num_threads=1 per worker",
    "torchserve": "TorchServe 0.12, default_workers_per_model=2, torch.set_num_threads(1) per worker, "
    "batch_size=1, token auth off",
}


def peer_env(version: Path, features: Path) -> dict:
    return {**os.environ, "PEER_ROOT": str(ROOT), "PEER_MODEL": str(version), "PEER_FEATURES": str(features),
            "PEER_STATE": str(CACHE / f"{version.parent.name}-{version.name}.pt"), "PEER_TORCH_THREADS": "1",
            "BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": str(CACHE / "bentoml"),
            "PYTHONPATH": str(ROOT)}  # fmt: skip


def launch(name: str, version: Path, models: Path, features: Path, port: int, log,
           redis_url: str | None = None) -> tuple[subprocess.Popen, str]:  # fmt: skip
    """Start one server; returns the process (its own session) and the URL that ranks."""
    env = peer_env(version, features)
    if name.startswith("ple-ranker"):
        env.update(RANKER_FEATURES_DIR=str(features), RANKER_WATCH="off")
        if name == "ple-ranker-1t":
            env["RANKER_INTRA_OP_THREADS"] = "1"
        if name == "ple-ranker-wide":
            env["RANKER_ADAPTIVE_THREADS"] = "false"
        if name.endswith("-pool"):
            env["RANKER_RANK_THREAD"] = "pool"
        if name.endswith("-nocache"):
            env["RANKER_ITEM_CACHE_ROWS"] = "0"
        if name.startswith("ple-ranker-2w"):
            env.update(RANKER_WORKERS="2", RANKER_REDIS_URL=redis_url, RANKER_REDIS_PREFIX=f"bench-{port}:",
                       RANKER_FEATURE_STORE="embedded", RANKER_WATCH="explicit")  # fmt: skip
            if name == "ple-ranker-2w-1t":
                env["RANKER_INTRA_OP_THREADS"] = "1"
            if name == "ple-ranker-2w-rows0":
                env["RANKER_WIDE_CALL_MIN_ROWS"] = "0"
            if name == "ple-ranker-2w-asyncio":
                env["RANKER_WORKER_LOOP"] = "asyncio"
        cmd = [str(BIN / "ranker-serve"), "--models", str(models), "--port", str(port), "--log-level", "warning"]
        path = "/v1/rank"
    elif name == "fastapi-ort":
        cmd = [sys.executable, "-m", "uvicorn", "bench.peers.fastapi_ort:app", "--workers", "2", "--port", str(port),
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
        path = "/v1/rank"
    elif name == "fastapi-torch":
        cmd = [sys.executable, "-m", "uvicorn", "bench.peers.fastapi_torch:app", "--workers", "2", "--port", str(port),
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
        path = "/v1/rank"
    elif name == "bentoml":
        cmd = [str(VENVS / "bentoml" / "bin" / "bentoml"), "serve", "bench.peers.bento_service:PLERanker",
               "--port", str(port), "--host", "127.0.0.1"]  # fmt: skip
        path = "/v1/rank"
    elif name == "torchserve":
        cmd = torchserve_command(env, port)
        path = "/predictions/ple"
    else:
        raise ValueError(name)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}{path}"


def torchserve_command(env: dict, port: int) -> list[str]:
    """Archive the handler (no weights inside: the handler reads PEER_STATE) and write a config."""
    venv = VENVS / "torchserve" / "bin"
    store = CACHE / "torchserve" / "model-store"
    store.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(venv / "torch-model-archiver"), "--model-name", "ple", "--version", "1.0", "--handler",
                    str(ROOT / "bench" / "peers" / "ts_handler.py"), "--export-path", str(store), "--force"],
                   check=True, env=env)  # fmt: skip
    config = CACHE / "torchserve" / "config.properties"
    config.write_text("\n".join([
        f"inference_address=http://127.0.0.1:{port}",
        f"management_address=http://127.0.0.1:{free_port()}",
        f"metrics_address=http://127.0.0.1:{free_port()}",
        "default_workers_per_model=2",
        "job_queue_size=1000",
        "disable_system_metrics=true",
        "install_py_dep_per_model=false",
        f"model_store={store}",
        "load_models=ple=ple.mar",
    ]) + "\n")  # fmt: skip
    env["PATH"] = f"{venv}:{env.get('PATH', '')}"
    env["LOG_LOCATION"] = env["METRICS_LOCATION"] = str(CACHE / "torchserve" / "logs")
    return [str(venv / "torchserve"), "--start", "--foreground", "--ts-config", str(config), "--ncs",
            "--disable-token-auth"]  # fmt: skip


def drop_bench_keys(redis_url: str) -> None:
    delete_keys(redis_url, "bench-*")


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(1)  # let worker processes of the group go before the next server starts


def wait_ready(url: str, body: bytes, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            r = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=10)
            if r.status_code == 200:
                return r.json()
        time.sleep(0.5)
    raise RuntimeError("server not ready in time")


def available(name: str) -> str | None:
    """Why a peer cannot run here, or None."""
    need = {"bentoml": VENVS / "bentoml" / "bin" / "bentoml", "torchserve": VENVS / "torchserve" / "bin" / "torchserve"}
    if name in need and not need[name].exists():
        return f"{need[name]} missing: run bench/setup_peers.sh"
    if name == "torchserve" and subprocess.run(["java", "-version"], capture_output=True).returncode != 0:
        return "no java on PATH"
    return None
