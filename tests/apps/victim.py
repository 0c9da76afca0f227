"""An ASGI app whose requests die with their worker, for tests/test_killed_requests.py.

Traced by opentelemetry-instrumentation-asgi (the server span takes the caller's traceparent).
Each request first notes its worker's pid in VICTIM_DIR/<path>, so that the test knows which
worker to kill, or which one its server killed:

/quick     answers at once: a request that ended before its worker was killed
/slow      waits (the event loop free) until the test kills the worker
/block     a regular expression that backtracks for ever holds the interpreter: uvicorn's health check
           (answered on a thread of the worker's) finds it unresponsive, and the master kills it
/segfault  reads address 0 through ctypes: SIGSEGV
/eat       joins the memory cgroup VICTIM_CGROUP and allocates until its OOM killer ends the worker
/exit      ends the worker with os._exit(3), as a library that gives up on a fatal error does
"""

import asyncio
import ctypes
import os
import re
from pathlib import Path

from hello import lifespan
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

NOTES = Path(os.environ.get("VICTIM_DIR", "/tmp"))


def eat_memory() -> None:
    cgroup = Path(os.environ["VICTIM_CGROUP"])
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    blocks = []
    while True:
        block = bytearray(16 << 20)
        block[::4096] = b"x" * len(range(0, 16 << 20, 4096))
        blocks.append(block)


async def _app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path = scope["path"].strip("/")
    with open(NOTES / path, "a") as note:  # a line per worker that takes it
        note.write(f"{os.getpid()}\n")
    if path == "slow":
        await asyncio.sleep(120)
    elif path == "block":
        re.match(r"(a+)+$", "a" * 64 + "!")
    elif path == "segfault":
        ctypes.string_at(0)
    elif path == "eat":
        eat_memory()
    elif path == "exit":
        os._exit(3)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})


app = OpenTelemetryMiddleware(_app)
