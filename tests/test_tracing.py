"""OpenTelemetry traces of /v1/rank: a server span under the caller's W3C trace context with one
span per stage, an error status on a refused request, OTLP export from a real ranker-serve to a
real HTTP receiver, and nothing at all when no endpoint is configured."""

from __future__ import annotations

import contextlib
import http.server
import threading

import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.app import create_app
from service.observability import tracing
from service.settings import Settings
from tests.conftest import free_port, serve_process

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
STAGES = ["parse", "features.fetch", "features.encode", "inference", "scoring"]


@pytest.fixture
def traced(trained):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(Settings(models_dir=trained.models_dir, features_dir=trained.features_dir, device="cpu"),
                     tracing=tracing.Tracing(provider))  # fmt: skip
    with TestClient(app) as client:
        yield client, exporter


def body(n: int, **extra) -> dict:
    return {"user": {"id": "u1"}, "candidates": [{"id": f"v{i}", "video_len": 30.0} for i in range(n)], **extra}


def test_a_rank_request_is_one_server_span_under_the_callers_trace_with_its_stages_in_order(traced):
    client, exporter = traced
    r = client.post("/v1/rank", json=body(7, request_id="req-1"), headers={"traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
    assert r.status_code == 200
    spans = exporter.get_finished_spans()
    root = next(s for s in spans if s.name == "POST /v1/rank")
    assert format(root.context.trace_id, "032x") == TRACE_ID and format(root.parent.span_id, "016x") == PARENT
    assert dict(root.attributes) == {"ranker.model": "ple", "ranker.version": r.json()["version"], "ranker.bucket": r.json()["bucket"],
                                     "ranker.candidates": 7, "ranker.request_id": "req-1"}  # fmt: skip
    children = sorted((s for s in spans if s is not root), key=lambda s: s.start_time)
    assert [s.name for s in children] == STAGES
    assert all(s.parent.span_id == root.context.span_id and s.context.trace_id == root.context.trace_id for s in children)
    # back to back, inside the request's span, each as long as the Server-Timing header says
    assert root.start_time == children[0].start_time and children[-1].end_time <= root.end_time
    assert all(a.end_time == b.start_time for a, b in zip(children[1:], children[2:]))
    timing = dict(part.split(";dur=") for part in r.headers["server-timing"].split(", "))
    for span, stage in zip(children[1:], ("store", "features", "inference", "scoring")):
        assert (span.end_time - span.start_time) / 1e6 == pytest.approx(float(timing[stage]), abs=0.002)


def test_a_refused_request_is_an_error_span_and_a_new_trace_without_a_caller(traced):
    client, exporter = traced
    r = client.post("/v1/rank", json=body(2, model="nope"))
    assert r.status_code == 404
    root = next(s for s in exporter.get_finished_spans() if s.name == "POST /v1/rank")
    assert root.parent is None and not root.status.is_ok and root.attributes["ranker.model"] == "nope"
    assert root.attributes["error.type"] == "NotFound" and "ranker.version" not in root.attributes  # service.problems


def test_no_endpoint_no_tracing(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.from_environment() is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")  # set but empty, as compose leaves it
    assert tracing.from_environment() is None


@contextlib.contextmanager
def otlp_receiver():
    """An HTTP server that takes OTLP/HTTP trace exports (protobuf) and keeps the decoded requests."""
    received: list[ExportTraceServiceRequest] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            data = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v1/traces":
                received.append(ExportTraceServiceRequest.FromString(data))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()


@pytest.mark.slow
def test_ranker_serve_exports_its_spans_over_otlp(trained):
    import httpx

    with otlp_receiver() as (endpoint, received):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "ranker-under-test",
               "RANKER_FEATURES_DIR": str(trained.features_dir), "RANKER_DEVICE": "cpu"}  # fmt: skip
        with serve_process(trained.models_dir, env) as url:
            r = httpx.post(f"{url}/v1/rank", json=body(3), headers={"traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
            assert r.status_code == 200
        # SIGTERM flushed the batch: the receiver has it
        spans = [(resource.resource, span) for req in received for resource in req.resource_spans
                 for scope in resource.scope_spans for span in scope.spans]  # fmt: skip
    assert sorted(span.name for _, span in spans) == sorted(["POST /v1/rank", *STAGES])
    assert all(span.trace_id.hex() == TRACE_ID for _, span in spans)
    service_names = {a.value.string_value for resource, _ in spans for a in resource.attributes if a.key == "service.name"}
    assert service_names == {"ranker-under-test"}
