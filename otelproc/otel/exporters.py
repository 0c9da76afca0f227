"""Where spans go: one registry of exporters (OTLP gRPC or HTTP/protobuf, console lines, console JSON),
behind the SDK's BatchSpanProcessor.

EXPORTERS makes each choice of `--exporter`, whose names and help are the settings'
(config.EXPORTER_CHOICES): importing this module fails when the two disagree.
The SDK reads OTEL_EXPORTER_OTLP_* and OTEL_BSP_* itself; otelproc only picks
the exporter and passes a flag's value on when one was given. The SDK is imported
where an exporter is made, so that loading this module costs nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlparse

from otelproc.config import AUTO, EXPORTER_CHOICES, OTLP_PROTOCOLS, Settings
from otelproc.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

# Spans of a process that lived a second should be in the backend about a second later,
# not after the SDK's default five; OTEL_BSP_SCHEDULE_DELAY still wins when set.
log = logging.getLogger("otelproc")

DEFAULT_SCHEDULE_DELAY_MS = 1000
DEFAULT_PORTS = dict(zip(OTLP_PROTOCOLS, (4317, 4318)))


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


def _otlp_variables_set() -> list[str]:
    """The names (never the values: headers hold secrets) of the SDK's OTLP variables set here."""
    return sorted(name for name, value in os.environ.items() if name.startswith("OTEL_EXPORTER_OTLP_") and value)


def configured_endpoint(settings: Settings) -> str | None:
    from opentelemetry.sdk.environment_variables import OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT

    return settings.otlp_endpoint or _env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT)


def collector_address(endpoint: str, protocol: str) -> tuple[str, int]:
    """The host and port an OTLP exporter given this endpoint connects to; ValueError, saying why, when it
    names none. gRPC takes host:port or a URL; HTTP a URL, or host[:port] (http:// is added)."""
    parsed = urlparse(endpoint if "://" in endpoint else f"//{endpoint}")
    if "://" in endpoint and parsed.scheme not in ("http", "https"):
        raise ValueError(f"the scheme is {parsed.scheme!r}, not http or https")
    port = parsed.port  # raises ValueError for a port that is not a number in range
    if not parsed.hostname:
        raise ValueError("no host in it")
    if port is None:
        if "://" not in endpoint and protocol == "grpc":
            raise ValueError("no port in it")
        port = 443 if parsed.scheme == "https" or protocol == "grpc" else 80
    return parsed.hostname, port


def check_endpoint(settings: Settings) -> None:
    """Says at start what the exporter would only find out at its first export: an endpoint that names no
    collector (an error) or whose host does not resolve (a warning: it may, later)."""
    from opentelemetry.sdk.environment_variables import OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT

    source, endpoint = "--otlp-endpoint", settings.otlp_endpoint
    for name in ("", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT):
        if name and not endpoint:
            source, endpoint = name, os.environ.get(name, "")
    if not endpoint:
        return
    try:
        host, port = collector_address(endpoint, settings.otlp_protocol)
    except ValueError as exc:
        example = "host:port or http://host:port" if settings.otlp_protocol == "grpc" else "http://host:port"
        raise ConfigError(f"{source} {endpoint}: not a collector's address ({exc}); give {example}") from None
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning(
            "%s %s: the host %s does not resolve (%s); spans are retried and dropped until it does",
            source,
            endpoint,
            host,
            exc.strerror or exc,
        )


def collector_answers(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("localhost", port), timeout=timeout):
            return True
    except OSError:
        return False


def _http_signal_url(endpoint: str, signal: str) -> str:
    """A base URL given by flag gets the signal path the SDK adds to OTEL_EXPORTER_OTLP_ENDPOINT."""
    url = endpoint if "://" in endpoint else f"http://{endpoint}"
    if urlparse(url).path in ("", "/"):
        url = url.rstrip("/") + f"/v1/{signal}"
    return url


def metrics_wanted() -> bool:
    from opentelemetry.environment_variables import OTEL_METRICS_EXPORTER

    return os.environ.get(OTEL_METRICS_EXPORTER, "otlp") != "none"


def _console_lines(settings: Settings, reason: str) -> Destination:
    from otelproc.otel.console import ConsoleLineExporter

    match = None if settings.trace_all else settings.match  # with --all every process matched by itself
    exporter = ConsoleLineExporter(sys.stdout, match, hide_children=settings.console_children == "hide")
    children = "; processes tracked only through their parent left out" if settings.console_children == "hide" else ""
    return Destination(exporter, "printing one line per span to stdout" + children + reason)


def _console_json(settings: Settings, reason: str) -> Destination:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    exporter = ConsoleSpanExporter(out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n")
    return Destination(exporter, "printing spans to stdout as JSON, one per line" + reason)


def _otlp(settings: Settings, reason: str) -> Destination:
    check_endpoint(settings)
    proto = settings.otlp_protocol
    endpoint = settings.otlp_endpoint or None
    metrics: MetricExporter | None = None
    if proto == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

        exporter: SpanExporter = HttpSpans(endpoint=_http_signal_url(endpoint, "traces") if endpoint else None)
        if metrics_wanted():
            metrics = HttpMetrics(endpoint=_http_signal_url(endpoint, "metrics") if endpoint else None)
        where = getattr(exporter, "_endpoint", endpoint)
    else:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans

        exporter = GrpcSpans(endpoint=endpoint)
        if metrics_wanted():
            metrics = GrpcMetrics(endpoint=endpoint)
        where = endpoint or configured_endpoint(settings) or "localhost:4317"
    what = "spans and its own metrics" if metrics else "spans"
    kind = "HTTP" if proto != "grpc" else "gRPC"
    return Destination(exporter, f"exporting {what} over OTLP/{kind} to {where}", metrics)


# Each choice of --exporter, made from the settings and why it was chosen ("" when by name).
EXPORTERS: dict[str, Callable[[Settings, str], Destination]] = {
    "otlp": _otlp,
    "console": _console_lines,
    "console-json": _console_json,
}
if EXPORTERS.keys() != EXPORTER_CHOICES.keys():
    raise ImportError(f"EXPORTERS makes {sorted(EXPORTERS)} but --exporter offers {sorted(EXPORTER_CHOICES)}")


def choose(settings: Settings) -> str:
    """A name in EXPORTERS: --exporter (or OTEL_TRACES_EXPORTER) decides, unless auto: then whether a collector is there."""
    if settings.exporter != AUTO:
        return settings.exporter
    if configured_endpoint(settings) or collector_answers(DEFAULT_PORTS[settings.otlp_protocol]):
        return "otlp"
    return "console"


def make_destination(settings: Settings) -> Destination:
    name = choose(settings)
    reason = ""
    if name != "otlp" and settings.exporter == AUTO:
        reason = (
            f" (no collector answered on localhost:{DEFAULT_PORTS[settings.otlp_protocol]}; "
            "set --otlp-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT to export)"
        )
    try:
        return EXPORTERS[name](settings, reason)
    except ValueError as exc:  # the SDK's exporters raise it for what they cannot parse
        if isinstance(exc, ConfigError):
            raise
        given = (["--otlp-endpoint"] if settings.otlp_endpoint else []) + _otlp_variables_set()
        check = f"; check {', '.join(given)}" if given else ""
        raise ConfigError(f"the {name} exporter refused its settings ({exc}){check}") from None


def queue_bound() -> int:
    """How many spans the batch processor holds before it drops, as the SDK reads OTEL_BSP_MAX_QUEUE_SIZE."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor._default_max_queue_size()  # noqa: SLF001 -- the SDK's own reading, not a copy


def make_processor(exporter: SpanExporter, max_queue_size: int) -> BatchSpanProcessor:
    from opentelemetry.sdk.environment_variables import OTEL_BSP_SCHEDULE_DELAY
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    delay = None if os.environ.get(OTEL_BSP_SCHEDULE_DELAY) else DEFAULT_SCHEDULE_DELAY_MS
    return BatchSpanProcessor(exporter, max_queue_size=max_queue_size, schedule_delay_millis=delay)
