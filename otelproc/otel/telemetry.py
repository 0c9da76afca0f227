"""otelproc's account of itself: what it saw, sent and dropped, as counters and OTLP metrics.

The hot path only adds to plain integers; the OpenTelemetry metrics SDK reads
them through observable instruments when it collects, so self-telemetry costs
nothing per event.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Iterable, Sequence

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otelproc import __version__
from otelproc.plural import count
from otelproc.stats import Stats, ThrottledLog

log = logging.getLogger("otelproc")


class CountingExporter(SpanExporter):
    """Wraps the real exporter to count what the collector took and what was lost after retries.

    A span the exporter cannot encode (the SDK raises; a string that is not valid
    Unicode, say) must not take the rest of its batch down: a batch that raises
    is split in halves until the spans at fault are alone, and only those are dropped.
    """

    def __init__(
        self, inner: SpanExporter, stats: Stats, keep: Callable[[Sequence[ReadableSpan]], bool] | None = None
    ) -> None:
        self.inner = inner
        self.stats = stats
        self.keep = keep or (lambda _spans: False)  # takes a failed batch for later (during a stop), else it is lost
        self.throttled = ThrottledLog()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # noqa: BLE001 -- the SDK would log and drop the whole batch
            if len(spans) > 1:
                half = len(spans) // 2
                first, second = self.export(spans[:half]), self.export(spans[half:])
                ok = first is SpanExportResult.SUCCESS and second is SpanExportResult.SUCCESS
                return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE
            self.stats.drops["span_invalid"] += 1
            self.throttled.warning(
                "span_invalid",
                "span %r could not be exported (%s); dropped, %d so far",
                spans[0].name,
                exc,
                self.stats.drops["span_invalid"],
            )
            return SpanExportResult.SUCCESS  # nothing left to retry
        if result is SpanExportResult.SUCCESS:
            self.stats.exported += len(spans)
        elif self.keep(spans):
            self.stats.kept += len(spans)
        else:
            self.stats.drops["export_failed"] += len(spans)
            self.stats.export_failures += 1
            log.warning(
                "export of %s failed; %d lost so far", count(len(spans), "span"), self.stats.drops["export_failed"]
            )
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _by_attribute(counter: Counter[str], key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    return lambda _options: [Observation(v, {key: k}) for k, v in list(counter.items())]


def _value(read: Callable[[], int]) -> Callable[[CallbackOptions], Iterable[Observation]]:
    return lambda _options: [Observation(read())]


def start_metrics(
    exporter: MetricExporter, stats: Stats, gauges: dict[str, tuple[Callable[[], int], str, str]], host: dict[str, str]
) -> MeterProvider:
    """OTLP metrics of the sidecar itself, every OTEL_METRIC_EXPORT_INTERVAL (SDK default 60 s)."""
    resource = Resource({**host, "service.name": "otelproc", "service.version": __version__})
    provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(exporter)])
    meter = provider.get_meter("otelproc", __version__)
    meter.create_observable_counter(
        "otelproc.events", [_by_attribute(stats.events, "kind")], "{event}", "process events received from the kernel"
    )
    meter.create_observable_counter(
        "otelproc.spans", [_by_attribute(stats.spans, "otelproc.span")], "{span}", "spans handed to the exporter"
    )
    meter.create_observable_counter(
        "otelproc.spans.exported", [_value(lambda: stats.exported)], "{span}", "spans the collector accepted"
    )
    meter.create_observable_counter(
        "otelproc.export.failures",
        [_value(lambda: stats.export_failures)],
        "{call}",
        "export calls that failed after retries",
    )
    meter.create_observable_counter(
        "otelproc.drops",
        [_by_attribute(stats.drops, "reason")],
        "{item}",
        "records, processes or spans dropped, by reason",
    )
    meter.create_observable_counter(
        "otelproc.reconciled",
        [_by_attribute(stats.reconciled, "what")],
        "{process}",
        "process starts and ends found by /proc sweeps instead of the kernel",
    )
    meter.create_observable_counter(
        "otelproc.failures",
        [_by_attribute(stats.failures, "stage")],
        "{failure}",
        "work of one stage that raised and was skipped, by stage",
    )
    meter.create_observable_counter(
        "otelproc.input.malformed",
        [_by_attribute(stats.malformed, "what")],
        "{item}",
        "malformed input from traced processes, ignored",
    )
    for name, (read, unit, description) in gauges.items():
        meter.create_observable_gauge(name, [_value(read)], unit, description)
    return provider
