"""Where spans go: the SDK's OTLP exporters (gRPC or HTTP/protobuf), or the console as lines or JSON,
behind the SDK's BatchSpanProcessor.

The SDK reads OTEL_EXPORTER_OTLP_* and OTEL_BSP_* itself; otelproc only picks
the exporter and passes a flag's value on when one was given.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from urllib.parse import urlparse

from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from otelproc.config import ConfigError, Settings
from otelproc.console import ConsoleLineExporter

# Spans of a process that lived a second should be in the backend about a second later,
# not after the SDK's default five; OTEL_BSP_SCHEDULE_DELAY still wins when set.
DEFAULT_SCHEDULE_DELAY_MS = 1000
DEFAULT_PORTS = {"grpc": 4317, "http/protobuf": 4318}


@dataclass(frozen=True)
class Destination:
    exporter: SpanExporter
    description: str  # for the log line that tells the user where spans go
    metric_exporter: MetricExporter | None = None  # otelproc's own metrics, beside its spans over OTLP


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def protocol(settings: Settings) -> str:
    chosen = settings.otlp_protocol or _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    return chosen or "grpc"


def configured_endpoint(settings: Settings) -> str | None:
    return settings.otlp_endpoint or _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def collector_answers(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("localhost", port), timeout=timeout):
            return True
    except OSError:
        return False


def choose(settings: Settings) -> str:
    """otlp, console or console-json: a flag or OTEL_TRACES_EXPORTER decides, else whether a collector is there."""
    if settings.sources["exporter"] != "default":
        chosen = settings.exporter
    else:
        chosen = {"otlp": "otlp", "console": "console"}.get(os.environ.get("OTEL_TRACES_EXPORTER", ""), "auto")
    if chosen != "auto":
        return chosen
    if configured_endpoint(settings) or collector_answers(DEFAULT_PORTS[protocol(settings)]):
        return "otlp"
    return "console"


def _http_signal_url(endpoint: str, signal: str) -> str:
    """A base URL given by flag gets the signal path the SDK adds to OTEL_EXPORTER_OTLP_ENDPOINT."""
    url = endpoint if "://" in endpoint else f"http://{endpoint}"
    if urlparse(url).path in ("", "/"):
        url = url.rstrip("/") + f"/v1/{signal}"
    return url


def metrics_wanted() -> bool:
    return os.environ.get("OTEL_METRICS_EXPORTER", "otlp") != "none"


def make_destination(settings: Settings) -> Destination:
    kind = choose(settings)
    if kind in ("console", "console-json"):
        reason = "" if settings.sources["exporter"] != "default" else (
            f" (no collector answered on localhost:{DEFAULT_PORTS[protocol(settings)]}; "
            "set --otlp-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT to export)"
        )
        if kind == "console":
            return Destination(ConsoleLineExporter(sys.stdout), "printing one line per span to stdout" + reason)
        exporter = ConsoleSpanExporter(out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n")
        return Destination(exporter, "printing spans to stdout as JSON, one per line" + reason)
    proto = protocol(settings)
    endpoint = settings.otlp_endpoint or None
    metrics: MetricExporter | None = None
    if proto == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

        exporter: SpanExporter = HttpSpans(endpoint=_http_signal_url(endpoint, "traces") if endpoint else None)
        if metrics_wanted():
            metrics = HttpMetrics(endpoint=_http_signal_url(endpoint, "metrics") if endpoint else None)
        where = getattr(exporter, "_endpoint", endpoint)
    elif proto == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans

        exporter = GrpcSpans(endpoint=endpoint)
        if metrics_wanted():
            metrics = GrpcMetrics(endpoint=endpoint)
        where = endpoint or configured_endpoint(settings) or "localhost:4317"
    else:
        raise ConfigError(f"OTLP protocol {proto!r} is not supported; use grpc or http/protobuf")
    what = "spans and its own metrics" if metrics else "spans"
    kind = "HTTP" if proto != "grpc" else "gRPC"
    return Destination(exporter, f"exporting {what} over OTLP/{kind} to {where}", metrics)


def make_processor(exporter: SpanExporter) -> BatchSpanProcessor:
    delay = None if os.environ.get("OTEL_BSP_SCHEDULE_DELAY") else DEFAULT_SCHEDULE_DELAY_MS
    return BatchSpanProcessor(exporter, schedule_delay_millis=delay)
