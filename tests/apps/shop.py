"""A traced ASGI app for the correlation tests: each request answers with its worker's pid.

Traced by opentelemetry-instrumentation-asgi. The process link comes from otelproc's
app-side helper: zero code under `opentelemetry-instrument` with
OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=otelproc, or, with SHOP_SETUP=code, the one line
`otelproc.app.enable()` after setting up the SDK (otel_setup.py).
"""

import os
import subprocess
import sys

from hello import lifespan
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

import otel_setup  # noqa: F401 (sets up the SDK when SHOP_SETUP=code)


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
