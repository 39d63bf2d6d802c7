"""OpenTelemetry tracing: one span per request, carrying the decision's keys.

The tracer provider is built here and passed to the gateway, never taken from
a global, so tests give it an in-memory exporter and read the spans back.
Exporters run in a batch processor on their own thread: a slow or failing
collector never fails or slows a prediction.
"""

from __future__ import annotations

import os
from typing import Literal

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Tracer

OTLP_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
SPAN_NAME = "rampart.predict"


def build_tracer_provider(
    exporter: SpanExporter | None = None, service_name: str = "rampart-gateway"
) -> TracerProvider:
    """A provider exporting to ``exporter`` if given, else to OTLP when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else nowhere (spans still made)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is None and os.environ.get(OTLP_ENV):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def build_tracer(mode: Literal["auto", "off"], name: str = "rampart.gateway") -> Tracer | None:
    """The gateway's tracer for ``telemetry.tracing`` in the config: ``auto``
    makes a span per request (exported when an OTLP endpoint is set); ``off``
    gives None, and the request path then makes no span at all."""
    if mode == "off":
        return None
    return build_tracer_provider().get_tracer(name)
