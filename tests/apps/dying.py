"""An ASGI app for tests/test_deaths.py that dies the way DYING says, with a secret in its words.

import    raises ValueError while uvicorn imports it in a worker (multiprocessing's bootstrap
          catches and prints it, status 1), with a message long enough to be bounded
lifespan  fails its lifespan start-up as Starlette does: sends lifespan.startup.failed with the
          traceback while handling the exception; uvicorn logs that and exits with status 3
thread    a background thread dies of an exception; the worker lives on and answers
exit      calls sys.exit(message) at import (status 1)
"""

import os
import sys
import threading
import traceback

from hello import lifespan

SECRET = "hunter2"
DYING = os.environ["DYING"]


def check_config() -> None:
    settings = "\n".join(f"setting_{i}: not valid" for i in range(1000))
    raise ValueError(f"bad config: password={SECRET}\n{settings}")


def poll() -> None:
    raise ConnectionError(f"poller lost redis://app:{SECRET}@127.0.0.1:6379/0")


if DYING == "import":
    check_config()
if DYING == "exit":
    sys.exit(f"bad config: token={SECRET}")
if DYING == "thread":
    threading.Thread(target=poll, name="poller", daemon=True).start()


async def failing_lifespan(receive, send):
    await receive()  # lifespan.startup
    try:
        check_config()
    except BaseException:
        await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
        raise


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await (failing_lifespan if DYING == "lifespan" else lifespan)(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
