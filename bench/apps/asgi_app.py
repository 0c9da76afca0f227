"""The ASGI service of bench/app_side.py: each request, a server span (opentelemetry-instrumentation-asgi)."""

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware


async def _app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


app = OpenTelemetryMiddleware(_app)
