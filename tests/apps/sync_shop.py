"""A WSGI app for gunicorn's sync workers: each request, a server span of its own, answered with the worker's pid.

The span is made by hand (no WSGI instrumentation is installed): it is a local
root span like the one any server instrumentation makes.
"""

import os

from opentelemetry import trace
from opentelemetry.trace import SpanKind

import otel_setup  # noqa: F401 (sets up the SDK when SHOP_SETUP=code)


def app(environ, start_response):
    tracer = trace.get_tracer("sync_shop")
    with tracer.start_as_current_span(
        "GET /", kind=SpanKind.SERVER, attributes={"http.target": environ["PATH_INFO"] + "?" + environ["QUERY_STRING"]}
    ):
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
