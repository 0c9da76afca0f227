"""The one-line set-up of the test apps when SHOP_SETUP=code (else `opentelemetry-instrument` does it).

Resource.create() runs the detectors OTEL_EXPERIMENTAL_RESOURCE_DETECTORS names,
as the SDK's own zero-code set-up does.
"""

import os

if os.environ.get("SHOP_SETUP") == "code":
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import otelproc.app

    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    otelproc.app.enable()
