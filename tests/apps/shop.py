"""A traced ASGI app for the correlation tests: each request answers with its worker's pid.

Traced by opentelemetry-instrumentation-asgi. The process link comes from otelproc's
app-side helper: zero code under `opentelemetry-instrument` with
OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=otelproc, or, with SHOP_SETUP=code, the one line
`otelproc.appside.enable()` after setting up the SDK here.
"""

import os
import subprocess
import sys

from hello import lifespan
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

if os.environ.get("SHOP_SETUP") == "code":
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import otelproc.appside

    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    otelproc.appside.enable()


async def _app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    body = str(os.getpid())
    if scope["path"] == "/spawn":
        child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        body = child.stdout.strip()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body.encode()})


app = OpenTelemetryMiddleware(_app)
