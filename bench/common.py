"""Shared helpers for the benchmarks: machine description, percentiles, result files, a served model."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name and driver, or None where nvidia-smi is absent or sees none."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)  # fmt: skip
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    return None


def machine() -> dict:
    import onnxruntime

    from training.quantize import cpu_name

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "providers": onnxruntime.get_available_providers(),
        "gpu": gpu_name(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def percentiles_ms(seconds: list[float]) -> dict:
    a = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "n": len(a)}  # fmt: skip


def alternated(first: Callable[[], Any], second: Callable[[], Any], repeat: int, block: int = 10,
               warmup_blocks: int = 2) -> tuple[list[tuple[float, Any]], list[tuple[float, Any]]]:
    """Time `first` and `second` in alternating blocks of `block` calls, about `repeat` calls each.

    A change in the machine's background load lands on both alike (their ratio is the figure that
    holds), while calls of one kind still follow each other as requests do. The first
    `warmup_blocks` blocks of each are dropped. Returns (seconds, return value) per kept call.
    """
    kept: tuple[list, list] = ([], [])
    for n in range(-warmup_blocks, -(-repeat // block)):
        for fn, out in ((first, kept[0]), (second, kept[1])):
            for _ in range(block):
                t0 = time.perf_counter()
                result = fn()
                elapsed = time.perf_counter() - t0
                if n >= 0:
                    out.append((elapsed, result))
    return kept


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[f"{c:,.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


def newest_version(models: Path, name: str) -> Path:
    versions = sorted((int(p.name) for p in (models / name).iterdir() if p.name.isdigit()), reverse=True)
    if not versions:
        raise SystemExit(f"no version of {name} under {models}; run `ranker-train --out {models}` first")
    return models / name / str(versions[0])


def delete_keys(redis_url: str, *patterns: str) -> None:
    """Delete a benchmark's Redis keys: every key matching each glob pattern."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        for pattern in patterns:
            keys = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    url: str
    proc: subprocess.Popen


@contextlib.contextmanager
def served(models: Path, env: dict | None = None, timeout: float = 60, log_path: Path | None = None,
           log_level: str | None = None, python: str | Path = sys.executable):  # fmt: skip
    """`ranker-serve --models DIR` on a free port until the block ends, for the benchmarks and the
    tests alike; yields Served(url, process). Its log goes to `log_path` when given; on exit the
    process gets SIGTERM and must have exited 0 (a caller may stop it itself first). `python`: the
    environment to serve from (the Feast one, for RANKER_FEATURE_STORE=feast)."""
    import httpx

    port = free_port()
    command = [str(python), "-m", "service.cli", "--models", str(models), "--port", str(port)]
    command += ["--log-level", log_level] if log_level else []
    # A file, not a pipe: a pipe nobody reads fills up and blocks the server's logging.
    log_file = open(log_path, "w+") if log_path else tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=log_file, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None:
                log_file.seek(0)
                raise RuntimeError(f"ranker-serve exited: {log_file.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError("ranker-serve did not become ready")
            time.sleep(0.1)
        yield Served(url, proc)
    finally:
        proc.terminate()
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            log_file.close()
        assert code == 0, f"ranker-serve exited {code} on SIGTERM"


def make_request(n: int, features_dir: Path) -> bytes:
    """A /v1/rank body: n candidates, the first ones known to the feature store, each with its video_len."""
    from service.features.store import read_table

    items = list(read_table(features_dir / "items.jsonl"))[:n] if (features_dir / "items.jsonl").exists() else []
    candidates = [{"id": row_id, "video_len": f.get("video_len", 30.0)} for row_id, f in items]
    candidates += [{"id": f"new{i}", "video_len": 5.0 + i % 300} for i in range(n - len(candidates))]
    return orjson.dumps({"user": {"id": "u42"}, "context": {"network": "wifi", "hour": 21}, "candidates": candidates})


def model_parser(description: str, repeat: int) -> argparse.ArgumentParser:
    """The arguments every served-model benchmark takes: the repository, the feature tables, the
    model name and how many calls to time."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--features", type=Path, default=ROOT / "data" / "features")
    p.add_argument("--name", default="ple")
    p.add_argument("--repeat", type=int, default=repeat)
    return p
