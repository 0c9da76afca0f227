"""A uvicorn server stopped by SIGTERM right after a request still exports that request's span.

uvicorn stops gracefully on SIGTERM, then raises SIGTERM again with the handler it
found at start-up, so the process dies by the signal and no atexit handler (where the
SDK flushes) runs. The app side flushes first, and SIGTERM ends the process as before.
Real uvicorn (alone, a --workers child, gunicorn's UvicornWorker) under the zero-code
helper or set up in code, started from a parent otelproc does not track; the batch delay
is long, so only a flush at the stop can deliver the span.
"""

from __future__ import annotations

import os
import signal
import subprocess

import psutil
import pytest

from support.ports import free_port
from support.servers import APPS, BATCH_DELAY_MS, SERVER, SETUPS, command, get_pids, setup_env, stop
from support.subjects import MATCH_TEST


def served_spans(receiver, pid: int) -> list:
    return [s for s in receiver.spans if s.service == "shop" and s.kind == SERVER and s.resource["process.pid"] == pid]


def assert_stopped_by_sigterm_from_us(receiver, pid: int, name: str) -> None:
    """Its lifetime span still says what the kernel saw: stopped by our SIGTERM, status OK."""
    (lifetime,) = receiver.wait_for(lambda _: receiver.of_pid(pid))
    assert lifetime.name == name
    assert lifetime.status != "ERROR"
    assert lifetime.attributes["otelproc.exit.signal_name"] == "SIGTERM"
    assert lifetime.attributes["otelproc.exit.reason"].startswith(f"stopped by SIGTERM from pid {os.getpid()} (")


def assert_worker_flushes_on_sigterm(receiver, worker: int, requests: int, name: str) -> None:
    """SIGTERM to a worker that served `requests`: their spans come from the stopped worker itself,
    before its master is stopped, and its lifetime span says our SIGTERM stopped it."""
    os.kill(worker, signal.SIGTERM)
    spans = receiver.wait_for(lambda _: served_spans(receiver, worker))
    assert len(spans) == requests
    assert_stopped_by_sigterm_from_us(receiver, worker, name)


def uvicorn(test_python: str, port: int, *options: str) -> list[str]:
    return [test_python, "-m", "uvicorn", "shop:app", "--app-dir", str(APPS), "--port", str(port), *options]


def env(endpoint: str, setup: str = "zero-code") -> dict[str, str]:
    return {**setup_env(endpoint, setup), "OTEL_BSP_SCHEDULE_DELAY": BATCH_DELAY_MS}


@pytest.mark.parametrize("setup", SETUPS)
def test_single_uvicorn_flushes_its_last_request_on_sigterm(sidecar, grpc_receiver, test_python, setup):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    port = free_port()
    server = subprocess.Popen(
        command(setup, uvicorn(test_python, port)),
        env=env(grpc_receiver.endpoint, setup),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        served = get_pids(port, "/", want=1)
        assert list(served) == [server.pid], "one process (opentelemetry-instrument execs uvicorn)"
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == -signal.SIGTERM, "it still dies by SIGTERM"
    finally:
        stop(server)
    assert len(grpc_receiver.wait_for(lambda _: served_spans(grpc_receiver, server.pid))) == served[server.pid]
    assert_stopped_by_sigterm_from_us(grpc_receiver, server.pid, "uvicorn")


@pytest.mark.parametrize("setup", SETUPS)
def test_uvicorn_worker_flushes_its_last_request_on_sigterm(sidecar, grpc_receiver, test_python, setup):
    """Set up in code, enable() runs as the worker's uvicorn imports the app, with uvicorn's handler in place."""
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    port = free_port()
    master = subprocess.Popen(
        command(setup, uvicorn(test_python, port, "--workers", "2")),
        env=env(grpc_receiver.endpoint, setup),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        (worker, requests), *_ = get_pids(port, "/", want=1).items()
        assert worker in {c.pid for c in psutil.Process(master.pid).children()}
        assert_worker_flushes_on_sigterm(grpc_receiver, worker, requests, "uvicorn worker")
    finally:
        stop(master)


def test_gunicorn_uvicorn_worker_flushes_its_last_request_on_sigterm(sidecar, grpc_receiver, test_python):
    """gunicorn's UvicornWorker sets SIGTERM back to the default in the worker, after the fork and before
    uvicorn starts: uvicorn finds the default, not the app side's handler, and raises SIGTERM with it."""
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    port = free_port()
    argv = [
        test_python,
        "-m",
        "gunicorn",
        "-w",
        "1",
        "-k",
        "uvicorn.workers.UvicornWorker",
        "-b",
        f"127.0.0.1:{port}",
        "--chdir",
        str(APPS),
        "shop:app",
    ]
    master = subprocess.Popen(
        command("zero-code", argv),
        env=env(grpc_receiver.endpoint),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ((worker, requests),) = get_pids(port, "/", want=1).items()
        assert_worker_flushes_on_sigterm(grpc_receiver, worker, requests, "gunicorn")
    finally:
        stop(master)
