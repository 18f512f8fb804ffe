"""What tracing costs a /v1/rank request: the same app without tracing (no OTLP endpoint, the
default) and with it (the SDK, a batching processor and an exporter that drops the spans, so the
network is not measured), in-process through the ASGI test client, alternated in blocks.

    python -m bench.tracing_cost [--models models] [--features data/features] [--repeat 400]

Prints p50 / p99 per request at 100 and 500 candidates and writes bench/results/tracing_cost.json.
"""

from __future__ import annotations

import os

from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench.common import (ROOT, alternated, make_request, model_parser, newest_version, percentiles_ms, print_table,
                          write_result)
from service.app import create_app
from service.observability.tracing import Tracing
from service.settings import Settings

SIZES = (100, 500)


class Dropped(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS


def main() -> int:
    p = model_parser(__doc__, repeat=400)
    args = p.parse_args()
    version = newest_version(args.models, args.name)
    settings = Settings(models_dir=args.models, features_dir=args.features, watch="off")
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    load_before = os.getloadavg()
    results, rows = {}, []
    with TestClient(create_app(settings)) as off, TestClient(create_app(settings, tracing=Tracing(provider))) as on:
        for n in SIZES:
            body = make_request(n, args.features)
            headers = {"content-type": "application/json", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}

            def call(client):
                r = client.post("/v1/rank", content=body, headers=headers)
                assert r.status_code == 200, r.text

            a, b = alternated(lambda: call(off), lambda: call(on), args.repeat)
            results[str(n)] = {"off": percentiles_ms([t for t, _ in a]), "on": percentiles_ms([t for t, _ in b])}
            f, t = results[str(n)]["off"], results[str(n)]["on"]
            rows.append([n, f["p50_ms"], t["p50_ms"], t["p50_ms"] - f["p50_ms"], f["p99_ms"], t["p99_ms"]])
    provider.shutdown()
    print(f"model {version}; load average {load_before[0]:.2f} at start; ms per request, in-process (ASGI test client)")
    print_table(["candidates", "off p50", "on p50", "on - off", "off p99", "on p99"], rows)
    path = write_result("tracing_cost", {"model": str(version.relative_to(ROOT) if version.is_relative_to(ROOT) else version),
                                         "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
                                         "repeat": args.repeat, "results": results})  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
