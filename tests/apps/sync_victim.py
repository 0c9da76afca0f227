"""A WSGI app for gunicorn's sync workers whose /sleep outlasts gunicorn's --timeout, for
tests/test_killed_requests.py; its /block outlasts it in one C call that checks for no signal (a key
derivation of minutes), where the worker's SIGABRT handler never runs. Its server span is made by hand from the caller's traceparent, as a
WSGI instrumentation would; the worker notes its pid in VICTIM_DIR/sleep first."""

import hashlib
import os
import time
from pathlib import Path

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

NOTES = Path(os.environ.get("VICTIM_DIR", "/tmp"))


def app(environ, start_response):
    carrier = {"traceparent": environ.get("HTTP_TRACEPARENT", "")}
    tracer = trace.get_tracer("sync_victim")
    path = environ["PATH_INFO"]
    with tracer.start_as_current_span(
        f"GET {path}",
        context=propagate.extract(carrier),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "GET", "url.path": path},
    ):
        with open(NOTES / path.strip("/"), "a") as note:  # a line per worker that takes it
            note.write(f"{os.getpid()}\n")
        if path == "/sleep":
            time.sleep(120)
        elif path == "/block":
            hashlib.pbkdf2_hmac("sha256", b"key", b"salt", 10**9)
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
