"""ranker-serve: start the ranking service. Flags win over RANKER_* environment variables."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from service import logsafe
from service.app import create_app
from service.settings import Settings


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
    # One worker per process: metrics and the model registry live in this process. log_config=None:
    # uvicorn's records go through the same escaping formatter as ours (no log injection).
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                            log_level=settings.log_level, access_log=False, log_config=None,
                            timeout_keep_alive=settings.keep_alive_s)  # fmt: skip
    _Server(config).run()
    return 0


class _Server(uvicorn.Server):
    """Exits 0 after a graceful SIGTERM shutdown (uvicorn re-raises the signal, exiting -15),
    so an orchestrator's normal stop is not reported as a crash."""

    def handle_exit(self, sig: int, frame) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)


if __name__ == "__main__":
    raise SystemExit(main())
