"""/healthz and /readyz for Kubernetes probes, on their own thread.

Live while the main loop turns (it beats every poll); ready once the probe is
attached and the processes already running are adopted.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STALL_SECONDS = 30.0  # a loop that has not turned for this long is stuck


class Health:
    def __init__(self) -> None:
        self.ready = False
        self._last_beat = time.monotonic()

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def live(self) -> bool:
        return time.monotonic() - self._last_beat < STALL_SECONDS


class HealthServer:
    def __init__(self, health: Health, port: int, host: str = "0.0.0.0") -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                checks = {"/healthz": health.live, "/readyz": lambda: health.ready and health.live()}
                check = checks.get(self.path)
                if check is None:
                    self.send_error(404)
                    return
                ok = check()
                body = b"ok\n" if ok else b"not ready\n" if self.path == "/readyz" else b"stalled\n"
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="otelproc-health", daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
