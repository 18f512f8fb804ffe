"""OpenTelemetry traces of /v1/rank, exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and off otherwise.

A traced request gives one server span, `POST /v1/rank`, a child of the caller's W3C
`traceparent` when it sends one, with the model, version, bucket, candidate count and request id
as attributes, and one child span per stage in order: parse (body read, JSON, validation),
features.fetch (the feature store), features.encode (raw features and the transform), inference
(the one ONNX Runtime call) and scoring (the formula, the order, the answer). The spans are made
after the request from the stage times the route measures anyway (the Server-Timing header's), so
tracing adds no work inside the stages, and when it is off the route does nothing more than one
`is None` check (bench/tracing_cost.py measures both). The exporter batches in a background
thread; the standard OTEL_* variables (service name, headers, batch delays, sampler) apply.
"""

from __future__ import annotations

import os
import time
from typing import Mapping

from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, Status, StatusCode

RECEIVED = "ranker.received_ns"  # request scope key: when the route began reading the body
STAGES = (("store", "features.fetch"), ("features", "features.encode"), ("inference", "inference"), ("scoring", "scoring"))


class Tracing:
    """The tracer and the provider that exports its spans (flushed on shutdown)."""

    def __init__(self, provider):
        self.provider = provider
        self.tracer = provider.get_tracer("ple-ranker")

    def shutdown(self) -> None:
        self.provider.shutdown()  # exports what is still batched


def from_environment() -> Tracing | None:
    """OTLP over HTTP (protobuf) when an OTLP endpoint is configured, else None (tracing off)."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "ple-ranker")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider)


def record_rank(tracer: trace.Tracer, headers: Mapping[str, str], received_ns: int, started_ns: int,
                stages: Mapping[str, float], attributes: Mapping[str, object], error: BaseException | None) -> None:  # fmt: skip
    """The request's spans from its measured times: parse from `received_ns` to `started_ns` (when
    the ranking began), then each stage of `stages` (seconds) back to back."""
    root = tracer.start_span("POST /v1/rank", context=extract(headers), kind=SpanKind.SERVER, start_time=received_ns,
                             attributes={k: v for k, v in attributes.items() if v is not None})  # fmt: skip
    inside = trace.set_span_in_context(root)
    tracer.start_span("parse", context=inside, start_time=received_ns).end(end_time=started_ns)
    at = started_ns
    for key, name in STAGES:
        if key in stages:
            end = at + int(stages[key] * 1e9)
            tracer.start_span(name, context=inside, start_time=at).end(end_time=end)
            at = end
    if error is not None:
        root.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        root.set_attribute("error.type", type(error).__name__)
    root.end(end_time=max(at, time.time_ns()))
