"""CPU per /v1/rank request through the whole ASGI app, in process (no sockets, no HTTP parsing):
the service's app with ONNX Runtime's default threads and with one thread, beside the plain peer's
app (bench/peers/fastapi_ort.py: FastAPI, the same RankingCore, one ORT thread). What each server
adds around the shared feature and scoring code, with the network and the client out of the figure.

    python -m bench.asgi_cpu [--models models] [--features data/features] [--candidates 100 500] [--repeat 1000]

Each app answers the same body `--repeat` times on one event loop, three rounds in turn; the figure
is the least process CPU time per call of the rounds (time.process_time: every thread, ORT's too).
Prints a table and writes bench/results/asgi_cpu.json.
"""

from __future__ import annotations

import asyncio
import os
import time

from bench.common import make_request, model_parser, newest_version, print_table, write_result
from service.app import create_app
from service.settings import Settings


async def post(app, body: bytes) -> None:
    """One POST /v1/rank through the ASGI interface, answered 200."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    headers = [(b"host", b"bench"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/rank", "raw_path": b"/v1/rank", "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}  # fmt: skip
    await app(scope, receive, send)
    assert sent[0]["status"] == 200, sent


async def started(app):
    """Run the app's lifespan startup (models, feature tables) and leave it running."""
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    message = await outbox.get()
    assert message["type"] == "lifespan.startup.complete", message
    return task


async def cpu_ms_per_call(app, body: bytes, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        await post(app, body)
    return (time.process_time() - start) * 1000 / calls


async def measure(args) -> dict:
    version = newest_version(args.models, args.name)
    os.environ.update(PEER_MODEL=str(version), PEER_FEATURES=str(args.features))
    import bench.peers.fastapi_ort as peer  # reads PEER_* at import

    def ours(**extra):
        return create_app(Settings(models_dir=args.models, features_dir=args.features, watch="off", **extra))

    apps = {"ple-ranker (default threads)": ours(), "ple-ranker (one ORT thread)": ours(intra_op_threads=1),
            "fastapi-ort peer (one ORT thread)": peer.app}  # fmt: skip
    lifespans = [await started(app) for name, app in apps.items() if name.startswith("ple-ranker")]
    results = {}
    for n in args.candidates:
        body = make_request(n, args.features)
        rounds: dict[str, list[float]] = {name: [] for name in apps}
        for app in apps.values():  # warm-up
            await cpu_ms_per_call(app, body, 100)
        for _ in range(3):
            for name, app in apps.items():
                rounds[name].append(await cpu_ms_per_call(app, body, args.repeat))
        results[str(n)] = {name: {"cpu_ms_per_call": min(r), "rounds": r} for name, r in rounds.items()}
    for task in lifespans:
        task.cancel()
    return results


def main() -> int:
    p = model_parser(__doc__, repeat=1000)  # --repeat: calls per app and round
    p.add_argument("--candidates", type=int, nargs="+", default=[100, 500])
    args = p.parse_args()
    load_before = os.getloadavg()
    results = asyncio.run(measure(args))
    rows = [[n, name, r["cpu_ms_per_call"]] for n, by_app in results.items() for name, r in by_app.items()]
    print_table(["candidates", "app", "CPU ms per request"], rows)
    path = write_result("asgi_cpu", {"what": "process CPU per /v1/rank call through the ASGI app in process, least of "
                                             "3 rounds of --repeat calls, apps in turn", "calls": args.repeat,
                                     "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
                                     "results": results})  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
