"""ranker-serve: start the ranking service. Flags win over RANKER_* environment variables."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.observability import logsafe
from service.settings import Settings
from service.workers import Supervisor, uvicorn_loop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ranker-serve", description=__doc__)
    p.add_argument("--models", dest="models_dir", type=Path, help="model repository (RANKER_MODELS_DIR, default ./models)")
    p.add_argument("--features", dest="features_dir", type=Path,
                   help="users.jsonl/items.jsonl for the embedded store (RANKER_FEATURES_DIR, default ./data/features)")  # fmt: skip
    p.add_argument("--host", help="bind address (RANKER_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (RANKER_PORT, default 8000)")
    p.add_argument("--redis-url", dest="redis_url", help="Redis for features and coordination (RANKER_REDIS_URL)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], help="inference device (RANKER_DEVICE, default auto)")
    p.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(argv)
    try:
        settings = Settings(**{k: v for k, v in vars(args).items() if v is not None})
    except ValidationError as exc:
        p.error(str(exc))
    logsafe.configure(settings.log_level)
    store = None  # the Feast store, opened here so that a missing package, repository or view is said
    if settings.feature_store == "feast":  # once, in one line, before any worker starts
        from service.features.feast_store import FeastSetupError, FeastStore

        try:
            store = FeastStore.of(settings)
        except FeastSetupError as exc:
            logging.getLogger("ranker").error("RANKER_FEATURE_STORE=feast: %s", exc)
            return 1
    if settings.workers > 1:
        flags = {f"RANKER_{k.upper()}": str(v) for k, v in vars(args).items() if v is not None}
        return serve_workers(settings, flags)
    # log_config=None: uvicorn's records go through the same escaping formatter as ours (no log injection).
    # Workers open their own stores; a lone process serves from the one checked above.
    config = uvicorn.Config(create_app(settings, freeze_heap=True, feature_store=store), host=settings.host,
                            port=settings.port, log_level=settings.log_level, access_log=False, log_config=None,
                            timeout_keep_alive=settings.keep_alive_s)  # fmt: skip
    QuietTermServer(config).run()
    return 0


def serve_workers(settings: Settings, flags: dict[str, str]) -> int:
    """`settings.workers` worker processes on one socket under a supervisor (service.workers). Each
    worker builds its app from the environment, so the flags are passed on as RANKER_* variables;
    the workers' metric files go to PROMETHEUS_MULTIPROC_DIR (a fresh temporary folder unless one is
    given, emptied either way: files left by an earlier run would be summed in)."""
    os.environ.update(flags)
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="ranker-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    config = {"host": settings.host, "port": settings.port, "log_level": settings.log_level, "access_log": False,
              "log_config": None, "timeout_keep_alive": settings.keep_alive_s,
              "loop": uvicorn_loop(settings.worker_loop)}  # fmt: skip
    try:
        supervisor = Supervisor(settings.workers, settings.host, settings.port, config, folder)
    except OSError as exc:
        logging.getLogger("ranker").error("cannot listen on %s:%s: %s", settings.host, settings.port, exc)
        return 1
    try:
        return supervisor.run()
    finally:
        if not given:
            shutil.rmtree(folder, ignore_errors=True)


def worker_app():
    """One worker's app (service.workers starts it in each worker process), from the RANKER_*
    environment. Each worker keeps a wide and a one-thread ONNX Runtime session per version
    (adaptive threads): intra_op_threads for a call while no worker has another in flight and the
    batch has at least wide_call_min_rows rows, the one-thread session otherwise (performance.md,
    "Small batches on one thread with workers")."""
    settings = Settings()
    logsafe.configure(settings.log_level)
    return create_app(settings, freeze_heap=True)


class QuietTermServer(uvicorn.Server):
    """Exits 0 after a graceful SIGTERM shutdown (uvicorn re-raises the signal, exiting -15),
    so an orchestrator's normal stop is not reported as a crash."""

    def handle_exit(self, sig: int, frame) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)


if __name__ == "__main__":
    raise SystemExit(main())
