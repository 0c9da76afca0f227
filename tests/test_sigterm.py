"""A uvicorn server stopped by SIGTERM right after a request still exports that request's span.

uvicorn stops gracefully on SIGTERM, then raises SIGTERM again with the handler it
found at start-up, so the process dies by the signal and no atexit handler (where the
SDK flushes) runs. The app side's SIGTERM handler is the one uvicorn finds: it flushes,
then lets SIGTERM end the process as before. Real uvicorn under the zero-code helper,
started from a parent otelproc does not track; the batch delay is long, so only a flush
at the stop can deliver the span.
"""

from __future__ import annotations

import os
import signal
import subprocess

import httpx
import psutil

from conftest import MATCH_TEST
from test_correlation import APPS, SERVER, free_port, get_pids, stop
from test_prefork import command, setup_env

BATCH_DELAY_MS = "60000"  # no batch leaves on its own while a test runs


def served_spans(receiver, pid: int) -> list:
    return [s for s in receiver.spans if s.service == "shop" and s.kind == SERVER and s.resource["process.pid"] == pid]


def assert_stopped_by_sigterm_from_us(receiver, pid: int, name: str) -> None:
    """Its lifetime span still says what the kernel saw: stopped by our SIGTERM, status OK."""
    (lifetime,) = receiver.wait_for(lambda _: receiver.of_pid(pid))
    assert lifetime.name == name
    assert lifetime.status != "ERROR"
    assert lifetime.attributes["otelproc.exit.signal_name"] == "SIGTERM"
    assert lifetime.attributes["otelproc.exit.reason"].startswith(f"stopped by SIGTERM from pid {os.getpid()} (")


def uvicorn(test_python: str, port: int, *options: str) -> list[str]:
    return [test_python, "-m", "uvicorn", "shop:app", "--app-dir", str(APPS), "--port", str(port), *options]


def env(endpoint: str) -> dict[str, str]:
    return {**setup_env(endpoint, "zero-code"), "OTEL_BSP_SCHEDULE_DELAY": BATCH_DELAY_MS}


def test_single_uvicorn_flushes_its_last_request_on_sigterm(sidecar, grpc_receiver, test_python):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    port = free_port()
    server = subprocess.Popen(command("zero-code", uvicorn(test_python, port)), env=env(grpc_receiver.endpoint),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        served = get_pids(port, "/", want=1)
        assert list(served) == [server.pid], "opentelemetry-instrument execs uvicorn: one process"
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == -signal.SIGTERM, "it still dies by SIGTERM"
    finally:
        stop(server)
    assert len(grpc_receiver.wait_for(lambda _: served_spans(grpc_receiver, server.pid))) == served[server.pid]
    assert_stopped_by_sigterm_from_us(grpc_receiver, server.pid, "uvicorn")


def test_uvicorn_worker_flushes_its_last_request_on_sigterm(sidecar, grpc_receiver, test_python):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    port = free_port()
    master = subprocess.Popen(command("zero-code", uvicorn(test_python, port, "--workers", "2")),
                              env=env(grpc_receiver.endpoint), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        (worker, requests), *_ = get_pids(port, "/", want=1).items()
        assert worker in {c.pid for c in psutil.Process(master.pid).children()}
        os.kill(worker, signal.SIGTERM)
        # Its span comes from the stopped worker itself, before the master is stopped.
        spans = grpc_receiver.wait_for(lambda _: served_spans(grpc_receiver, worker))
        assert len(spans) == requests
        assert_stopped_by_sigterm_from_us(grpc_receiver, worker, "uvicorn worker")
    finally:
        stop(master)
