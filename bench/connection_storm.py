"""Worker processes under a connection storm: an open-loop client asking for more than the server
can answer opens a new connection whenever all of its own are busy, so the server faces thousands
of connections. What matters is whether the workers keep answering at their capacity or spend
their time in the fair accept (service/workers.py, FairListener).

    python -m bench.connection_storm [--models models] [--features data/features] [--candidates 100]
                                     [--rate 1500] [--seconds 8] [--workers 2] [--redis-url URL] [--out NAME]

Prints what was achieved and writes bench/results/<NAME>.json (default connection_storm).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from bench.common import ROOT, make_request, served, write_result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--features", type=Path, default=ROOT / "data" / "features")
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--rate", type=float, default=1500.0, help="requests/s asked, above the server's capacity")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="the workers' control plane")
    p.add_argument("--out", default="connection_storm")
    args = p.parse_args()
    env = {"RANKER_WORKERS": str(args.workers), "RANKER_REDIS_URL": args.redis_url, "RANKER_WATCH": "explicit",
           "RANKER_REDIS_PREFIX": f"storm-{uuid.uuid4().hex[:8]}:", "RANKER_FEATURE_STORE": "embedded",
           "RANKER_FEATURES_DIR": str(args.features)}  # fmt: skip
    load_before = os.getloadavg()
    with tempfile.NamedTemporaryFile(suffix=".json") as body, served(args.models, env, log_level="warning") as server:
        body.write(make_request(args.candidates, args.features))
        body.flush()
        out = subprocess.run([sys.executable, "-m", "bench.loadgen", "--url", f"{server.url}/v1/rank", "--body",
                              body.name, "--seconds", str(args.seconds), "--warmup", "1", "open", "--rate",
                              str(args.rate)], capture_output=True, text=True, check=True)  # fmt: skip
    result = json.loads(out.stdout)
    print(f"asked {args.rate:.0f} req/s: achieved {result['achieved_rps']:.0f}, p50 {result['p50_ms']:.0f} ms, "
          f"{result.get('connections_opened')} connections opened, statuses {result['statuses']}")  # fmt: skip
    path = write_result(args.out, {"workers": args.workers, "candidates": args.candidates,
                                   "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
                                   "result": result})  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
