"""docs/dashboard.png: the live dashboard of a real ranker-serve under load, two versions split 90/10.

    .venv/bin/python -m bench.dashboard_screenshot [--models DIR --features DIR] [--seconds 240] [--out docs/dashboard.png]

Without --models, trains two small versions of the simulator's PLE (seeds 1 and 2, so the arms
differ) into a temporary folder. Then: ranker-serve on a free port (embedded feature store), a
90/10 split of versions 1 and 2, rank requests from two paced clients (5 to 200 candidates, one
in ten invalid, as in tests/test_monitoring_stack.py), the page open in headless Chromium (Debian's
/usr/bin/chromium through Playwright) for --seconds, then a full-page screenshot.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TOKEN = "screenshot-token"


def train(models: Path, features: Path) -> None:
    for seed in (1, 2):
        subprocess.run([BIN / "ranker-train", "--data", "videolog", "--model", "ple", "--epochs", "1", "--impressions",
                        "50000", "--threads", "1", "--seed", str(seed), "--out", models, "--features-out", features],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip


def send(client: httpx.Client, rng: random.Random) -> None:
    n = rng.choice([5, 20, 50, 100, 200])
    candidates = [{"id": f"v{i}", "video_len": rng.uniform(3, 300)} for i in rng.sample(range(3000), n)]
    if rng.random() < 0.1:
        candidates[0]["video_len"] = -1.0  # a 422, so the error panels have something to show
    body = {"user": {"id": f"u{rng.randrange(2000)}"}, "context": {"hour": rng.randrange(24)}, "candidates": candidates}
    client.post("/v1/rank", json=body)


def traffic(url: str, stop: threading.Event, seed: int, pause_s: float) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            send(client, rng)
            time.sleep(pause_s)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, help="a repository with ple/1 and ple/2 (default: train two)")
    p.add_argument("--features", type=Path, help="the feature tables for the embedded store")
    p.add_argument("--seconds", type=float, default=240.0, help="traffic before the screenshot")
    p.add_argument("--pause", type=float, default=0.03, help="each client's pause between requests (s)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        models, features = args.models, args.features
        if models is None:
            models, features = Path(tmp) / "models", Path(tmp) / "features"
            print("training two versions ...", file=sys.stderr)
            train(models, features)
        port = 18000 + os.getpid() % 1000
        env = {**os.environ, "RANKER_ADMIN_TOKEN": TOKEN, "RANKER_WATCH": "off", "RANKER_FEATURES_DIR": str(features or "")}
        env.pop("RANKER_REDIS_URL", None)
        server = subprocess.Popen([BIN / "ranker-serve", "--models", str(models), "--port", str(port), "--device", "cpu"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        url, stop = f"http://127.0.0.1:{port}", threading.Event()
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            admin = {"Authorization": f"Bearer {TOKEN}"}
            httpx.post(f"{url}/v1/admin/models/ple/versions/1/load", headers=admin, timeout=60).raise_for_status()
            httpx.put(f"{url}/v1/admin/models/ple/split", headers=admin, json={"weights": {"1": 0.9, "2": 0.1}}).raise_for_status()
            clients = [threading.Thread(target=traffic, args=(url, stop, seed, args.pause), daemon=True) for seed in (1, 2)]
            for c in clients:
                c.start()
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
                try:
                    page = browser.new_page(viewport={"width": 1280, "height": 1000})
                    page.goto(f"{url}/dashboard")
                    time.sleep(args.seconds)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(args.out), full_page=True)
                    print(page.locator("#versions").inner_text(), file=sys.stderr)
                finally:
                    browser.close()
        finally:
            stop.set()
            server.terminate()
            server.wait(timeout=30)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
