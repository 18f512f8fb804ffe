"""Monitoring with real processes: ranker-serve under load, a real Prometheus scraping it every
second, and headless Chromium on /dashboard. Everything listens on 127.0.0.1 and is stopped in
`finally`. One server and one Prometheus serve the whole module (start-up is the slow part)."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.observability.livestats import histogram_quantile, read_histogram
from service.observability.metrics import Metrics
from tests.conftest import free_port, need_tool, wait_until

ROOT = Path(__file__).resolve().parents[1]
GRAFANA_DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "ple-ranker.json"
BIN = Path(sys.executable).parent
TOKEN = "test-admin-token"
# Grafana fills $__rate_interval in (4 scrape intervals at least); with our 1 s scrapes, 10 s.
RATE_INTERVAL = "10s"

pytestmark = pytest.mark.slow


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Traffic:
    """Rank requests from a background thread: varied sizes, unknown ids (store misses), and one
    in ten invalid (a 422), so latency, throughput and the error rate all have data."""

    def __init__(self, url: str):
        self.url, self.sent = url, 0
        self._running, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._loop, name="traffic", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        rng = random.Random(5)
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                if not self._running.wait(0.1):
                    continue
                send(client, rng)
                self.sent += 1
                time.sleep(0.01)  # at most ~100 requests/s: the machine's two cores are shared

    def resume(self) -> None:
        self._running.set()

    def pause(self) -> None:
        self._running.clear()
        time.sleep(0.3)  # let the request in flight finish

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def send(client: httpx.Client, rng: random.Random) -> int:
    n = rng.choice([5, 20, 50, 100, 200])
    candidates = [{"id": f"v{i}", "video_len": rng.uniform(3, 300)} for i in rng.sample(range(600), n)]  # ids unique
    if rng.random() < 0.1:
        candidates[0]["video_len"] = -1.0  # 422 invalid_request
    body = {"user": {"id": f"u{rng.randrange(400)}"}, "context": {"hour": rng.randrange(24)}, "candidates": candidates}
    return client.post("/v1/rank", json=body).status_code


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """ranker-serve with versions 1 and 2 of the model (2 is a copy of 1: how a rollout starts)."""
    root = tmp_path_factory.mktemp("stack")
    models = root / "models"
    shutil.copytree(trained.models_dir, models)
    v2 = models / "ple" / "2"
    shutil.copytree(models / "ple" / "1", v2)
    spec = json.loads((v2 / "model.json").read_text())
    spec["version"] = 2
    (v2 / "model.json").write_text(json.dumps(spec))

    port = free_port()
    env = {**os.environ, "RANKER_FEATURES_DIR": str(trained.features_dir), "RANKER_ADMIN_TOKEN": TOKEN,
           "RANKER_WATCH": "off"}  # fmt: skip
    env.pop("RANKER_REDIS_URL", None)  # the embedded store: this test is about monitoring, not Redis
    with open(root / "server.log", "w") as log:
        process = subprocess.Popen([BIN / "ranker-serve", "--models", models, "--port", str(port), "--device", "cpu"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def ready():
            assert process.poll() is None, (root / "server.log").read_text()
            try:
                return httpx.get(f"{url}/health/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 60, "ranker-serve to become ready")
        admin = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.post(f"{url}/v1/admin/models/ple/versions/1/load", headers=admin, timeout=30)
        assert r.status_code == 200, r.text
        r = httpx.put(f"{url}/v1/admin/models/ple/split", headers=admin, json={"weights": {"1": 0.7, "2": 0.3}})
        assert r.status_code == 200, r.text
        traffic = Traffic(url)
        try:
            yield SimpleNamespace(url=url, traffic=traffic, root=root)
        finally:
            traffic.close()
    finally:
        stop(process)


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    """A real Prometheus (Debian package) scraping the server every second, its TSDB in a temp dir."""
    binary = need_tool("prometheus", "prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    config = root / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: ranker\n    static_configs: [{{targets: ['{server.url.removeprefix('http://')}']}}]\n"
    )
    port = free_port()
    with open(root / "prometheus.log", "w") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                                    f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def ready():
            assert process.poll() is None, (root / "prometheus.log").read_text()
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 30, "Prometheus to become ready")
        yield url
    finally:
        stop(process)


def query(prometheus_url: str, expr: str) -> list[dict]:
    r = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def values(result: list[dict]) -> list[float]:
    return [float(row["value"][1]) for row in result]


def grafana_targets() -> list[tuple[str, str, str]]:
    """(panel title, legend, PromQL as Grafana would send it) for every target of every panel."""
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text())
    return [(panel["title"], target["legendFormat"], target["expr"].replace("$__rate_interval", RATE_INTERVAL))
            for panel in dashboard["panels"] for target in panel["targets"]]  # fmt: skip


def test_every_grafana_query_returns_data_from_a_real_prometheus(server, prometheus):
    server.traffic.resume()
    targets = grafana_targets()
    assert len(targets) >= 12
    # Wait for a rate over the window: a few scrapes while requests flow.
    wait_until(lambda: values(query(prometheus, targets[0][2])), 40, "the p50 query to return data", interval=0.5)

    results = {}
    for title, legend, expr in targets:
        what = f"data for {title!r} ({legend}): {expr}"
        result = wait_until(lambda e=expr: query(prometheus, e), 10, what, interval=0.5)
        assert all(math.isfinite(v) for v in values(result)), (title, result)
        results[(title, legend)] = values(result)

    # The dashboard's core numbers make sense, not only exist.
    latency = [results[("POST /v1/rank latency", p)][0] for p in ("p50", "p95", "p99")]
    assert 0 < latency[0] <= latency[1] <= latency[2] < 1.0, latency
    assert sum(results[("Requests per second by status", "{{status}}")]) > 1
    assert 0 < results[("Error rate (non-2xx share of /v1/rank)", "error rate")][0] < 0.5
    assert results[("Candidates per request", "mean")][0] > 5
    assert sorted(results[("Traffic split", "{{model}}/{{version}}")]) == pytest.approx([0.3, 0.7])
    assert results[("Active version", "{{model}}")] == [1.0]
    # Per version: both arms answer, and their mean predictions are probabilities (or VCR in [0, 1]).
    assert len(results[("Requests per second and error rate by version", "req/s {{model}}/{{version}}")]) == 2
    predictions = results[("Mean prediction by version and task", "{{task}} {{model}}/{{version}}")]
    assert len(predictions) == 10 and all(0 < p < 1 for p in predictions), predictions


def test_grafana_queries_name_only_metrics_the_service_declares():
    declared = set()
    for family in Metrics().registry.collect():
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}.get(family.type, ("",))
        declared |= {family.name + s for s in suffixes}
    used = {name for _, _, expr in grafana_targets() for name in re.findall(r"\branker_[a-z_]+", expr)}
    assert used and used <= declared, used - declared


def test_dashboard_percentiles_match_prometheus_histogram_quantile(server, prometheus):
    """livestats reads the same buckets as PromQL: over the same (all-time) counts, the same p50/p95/p99."""
    server.traffic.pause()
    count = 'sum(ranker_request_duration_seconds_count{route="/v1/rank"})'

    def scraped_text():
        text = httpx.get(f"{server.url}/metrics").text
        served = read_histogram(text_string_to_metric_families(text), "ranker_request_duration_seconds",
                                lambda labels: labels["route"] == "/v1/rank")  # fmt: skip
        scraped = values(query(prometheus, count))
        return served if scraped and scraped[0] == served.count else None

    served = wait_until(scraped_text, 15, "Prometheus to scrape the last requests", interval=0.5)
    assert served.count > 20
    for q in (0.5, 0.95, 0.99):
        expr = f'histogram_quantile({q}, sum by (le) (ranker_request_duration_seconds_bucket{{route="/v1/rank"}}))'
        assert values(query(prometheus, expr))[0] == pytest.approx(histogram_quantile(q, served), rel=1e-9)


def headless_chromium(playwright, executable: str):
    """Debian's chromium driven by Playwright (which never downloads a browser here)."""
    return playwright.chromium.launch(executable_path=executable, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-quic"])  # fmt: skip


def test_dashboard_in_headless_chromium_updates_after_traffic(server, tmp_path):
    chromium = need_tool("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    server.traffic.pause()
    problems: list[str] = []
    with sync_playwright() as p:
        browser = headless_chromium(p, chromium)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(f"{server.url}/dashboard")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('window')")
            before = int(page.text_content("#requests-total"))

            with httpx.Client(base_url=server.url, timeout=10) as client:
                rng = random.Random(11)
                codes = [send(client, rng) for _ in range(40)]
            page.wait_for_function(f"Number(document.getElementById('requests-total').textContent) >= {before + 40}",
                                   timeout=15_000)  # fmt: skip
            tiles = {k: page.text_content(f"#{k}") for k in ("p50", "p95", "p99", "rps", "candidates", "error-rate")}
            assert 0 < float(tiles["p50"]) <= float(tiles["p95"]) <= float(tiles["p99"]) < 1000, tiles
            assert float(tiles["rps"]) > 0 and float(tiles["candidates"]) > 1, tiles
            if any(c != 200 for c in codes):
                assert float(tiles["error-rate"]) > 0, tiles
            rows = page.locator("#models tr").all_inner_texts()
            assert len(rows) == 2 and "70 %" in rows[0] + rows[1] and "30 %" in rows[0] + rows[1], rows
            assert page.locator("#latency-chart polyline").count() == 3
            # The arms of the split compared: a row and a line per version, with its own numbers.
            arms = page.locator("#versions tr").all()
            assert len(arms) == 2, page.locator("#versions").inner_text()
            for arm, (name, share) in zip(arms, [("ple/1", "70 %"), ("ple/2", "30 %")]):
                cells = arm.locator("td").all_inner_texts()
                assert cells[0].startswith(name) and cells[1].strip().endswith(share), cells
                assert float(cells[2]) > 0 and all(0 < float(c) < 1 for c in cells[6:]), cells  # req/s, mean predictions
                p50, p99 = (float(v) for v in cells[3].split("/"))
                assert 0 < p50 <= p99 < 1000, cells
            headers = page.locator("#versions-head th").all_inner_texts()
            assert headers[6:] == ["mean cmr", "mean ctr", "mean shr", "mean vcr", "mean vtr"], headers
            for chart in ("#version-rps-chart", "#version-p99-chart"):
                assert page.locator(f"{chart} polyline").count() == 2, chart
            page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
            # Checked before closing: closing aborts the page's next poll, which is no fault of the page.
            assert problems == []
        finally:
            browser.close()
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def test_docs_render_in_headless_chromium_with_no_internet(server):
    chromium = need_tool("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    problems: list[str] = []
    with sync_playwright() as p:
        browser = headless_chromium(p, chromium)
        try:
            page = browser.new_page()
            # Everything but the service is cut off, as in a cluster with no way out.
            page.route(lambda url: not url.startswith(server.url), lambda route: (outside.append(route.request.url), route.abort()))
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(f"{server.url}/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=15_000)  # Swagger UI drew the operations
            operations = page.locator(".opblock-summary-path").all_inner_texts()
        finally:
            browser.close()
    assert outside == [] and problems == []
    assert "/v1/rank" in operations and any(op.startswith("/v1/admin/models") for op in operations), operations
