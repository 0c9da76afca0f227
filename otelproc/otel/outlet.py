"""Where the sidecar's spans leave it: the SDK's batch processor in front of the chosen exporter.

The sidecar hands each span to `Outlet.emit`, which counts it and drops it (counted) when
the processor's queue is full rather than block the ring-buffer thread. `open_outlet`
builds the real one: the exporter from the registry (exporters.py), run on a thread of
its own so that a stop is bounded (unsent.Courier), wrapped to count what the collector
took (telemetry.CountingExporter); `Outlet.finish` then delivers what it can within
--stop-timeout and keeps the rest for the next start (unsent.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from otelproc.config import Settings
from otelproc.otel import unsent
from otelproc.otel.exporters import make_destination, make_processor, queue_bound
from otelproc.otel.telemetry import CountingExporter
from otelproc.stats import Stats

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter

# (deadline as time.monotonic(), whether a second signal asks to hurry) -> what became of the
# spans not delivered, in words for the stop line ("" when all went out)
Finish = Callable[[float, Callable[[], bool]], str]


class Outlet:
    """A span processor with a bound on the spans in flight, and the stop that empties it."""

    def __init__(
        self,
        processor: SpanProcessor,
        stats: Stats,
        max_in_flight: int,
        description: str,
        metric_exporter: MetricExporter | None = None,
        finish: Finish | None = None,
    ) -> None:
        self.processor = processor
        self.stats = stats
        self.max_in_flight = max_in_flight
        self.description = description  # where spans go, for the log line at start
        self.metric_exporter = metric_exporter  # otelproc's own metrics, beside its spans over OTLP
        self._finish = finish

    def emit(self, span: ReadableSpan, role: str) -> None:
        """Hands a span to the batch processor, or counts it dropped when its queue is full."""
        if self.stats.in_flight() >= self.max_in_flight:
            self.stats.drops["queue_full"] += 1
            return
        self.stats.spans[role] += 1
        self.processor.on_end(span)

    def finish(self, deadline: float, hurry: Callable[[], bool]) -> str:
        """Delivers what it can by deadline; returns what became of the rest, in words."""
        if self._finish is not None:
            return self._finish(deadline, hurry)
        self.processor.shutdown()
        return ""


def open_outlet(settings: Settings, stats: Stats) -> Outlet:
    """The real outlet: --exporter's exporter, its backlog from the last stop sent first, a bounded stop."""
    destination = make_destination(settings)
    backlog_path = unsent.path_beside(settings.state_file)
    kept = unsent.Unsent(backlog_path, unsent.Backlog(backlog_path, stats.drops))
    courier = unsent.Courier(destination.exporter, kept.backlog)
    bound = queue_bound()
    processor = make_processor(CountingExporter(courier, stats, kept.keep), bound)
    return Outlet(
        processor,
        stats,
        bound,
        destination.description,
        destination.metric_exporter,
        lambda deadline, hurry: kept.finish(processor, courier, stats, deadline, hurry),
    )
