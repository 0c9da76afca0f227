"""otelproc's own accounting of what it exports: CountingExporter against a real OTLP/gRPC receiver on loopback."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext

from otelproc.otel.telemetry import CountingExporter, Stats


def test_the_exporter_drops_only_the_span_it_cannot_encode(grpc_receiver):
    """A span the OTLP encoder refuses (text that is not valid Unicode) is dropped alone and counted; the
    rest of its batch is exported."""

    def span(name: str) -> ReadableSpan:  # the encoder skips a bad attribute, but not a bad name
        return ReadableSpan(name=name, context=SpanContext(7, len(name), False), start_time=1, end_time=2)

    stats = Stats()
    exporter = CountingExporter(OTLPSpanExporter(endpoint=grpc_receiver.endpoint, insecure=True), stats)
    batch = [span(f"s{i}" + "." * i) for i in range(7)] + [span("surrogate \udcfe")]
    try:
        exporter.export(batch)
    finally:
        exporter.shutdown()
    received = grpc_receiver.wait_for(lambda spans: len(spans) >= 7 and spans)
    assert sorted(s.name for s in received) == [f"s{i}" + "." * i for i in range(7)]
    assert stats.exported == 7 and stats.drops["span_invalid"] == 1 and stats.drops["export_failed"] == 0
