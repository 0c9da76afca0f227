"""The demo service: a few endpoints whose requests and processes show up in Jaeger.

Run it as `opentelemetry-instrument uvicorn app:app --workers 3` with
OTEL_SERVICE_NAME=demo and OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=otelproc: the
auto-instrumentation exports the request spans, and otelproc's app-side helper
links each one to the process span of the worker that served it. The only
tracing code here is the ASGI middleware (plain ASGI apps are not found by the
auto-instrumentation; a FastAPI app would need none).

    GET /       which worker answered
    GET /work   burns a little CPU
    GET /spawn  runs a child python: its process span sits under this request
    GET /fail   answers 500: an error request span
    GET /slow   answers after a minute: a request to kill its worker in (the span goes out all the same)
    GET /crash  the worker exits with status 70 in the middle of the request (uvicorn starts another):
                its process span ends in error, and the request, unanswered, is in its trace all the same
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware


def hello() -> dict:
    return {}


def work() -> dict:
    digest = b"otelproc"
    for _ in range(200_000):
        digest = hashlib.sha256(digest).digest()
    return {"digest": digest.hex()[:16]}


def spawn() -> dict:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, timeout=30, check=True
    )
    return {"child": int(child.stdout)}


ROUTES = {"/": hello, "/work": work, "/spawn": spawn, "/slow": hello}


async def demo(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/slow":
        await asyncio.sleep(60)
    if scope["path"] == "/crash":
        os._exit(70)  # EX_SOFTWARE: no cleanup, no flush, as a worker that hits a fatal error
    handler = ROUTES.get(scope["path"])
    if handler is not None:
        status, body = 200, handler()
    elif scope["path"] == "/fail":
        status, body = 500, {"error": "failed, as asked"}
    else:
        status, body = 404, {"error": "not found"}
    body["worker"] = os.getpid()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


app = OpenTelemetryMiddleware(demo)
