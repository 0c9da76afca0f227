"""The Flask service of bench/app_side.py: each request, a server span from the caller's context, made by a
WSGI middleware as an instrumentation would (the five attributes at the start, the status at the end)."""

from flask import Flask
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

flask_app = Flask(__name__)


@flask_app.get("/items/<int:item>")
def item(item: int) -> str:
    return "ok"


def app(environ, start_response):
    tracer = trace.get_tracer("bench.wsgi")
    attributes = {
        "http.request.method": environ["REQUEST_METHOD"],
        "url.path": environ["PATH_INFO"],
        "url.scheme": environ["wsgi.url_scheme"],
        "server.address": environ["SERVER_NAME"],
        "http.route": "/items/<int:item>",
    }
    context = propagate.extract({"traceparent": environ.get("HTTP_TRACEPARENT", "")})
    with tracer.start_as_current_span(
        "GET /items/<int:item>", context=context, kind=SpanKind.SERVER, attributes=attributes
    ) as span:

        def recording_start_response(status, headers, exc_info=None):
            span.set_attribute("http.response.status_code", int(status.split()[0]))
            return start_response(status, headers, exc_info)

        return flask_app(environ, recording_start_response)
