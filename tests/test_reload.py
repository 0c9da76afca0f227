"""uvicorn --reload: a reloader that spawns the server, and spawns the next one at each reload.

Real uvicorn under the zero-code helper (`opentelemetry-instrument` with
OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=otelproc), started from a parent otelproc does
not track; the sidecar and the app export to the same real OTLP receiver.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx

from support.ports import free_port
from support.servers import (
    APPS,
    BATCH_DELAY_MS,
    SERVER,
    assert_children_of,
    assert_each_names_its_worker,
    command,
    request_number,
    setup_env,
    stop,
)
from support.subjects import MATCH_TEST


def test_uvicorn_reload_each_server_lifetime_has_its_requests(sidecar, grpc_receiver, test_python, tmp_path):
    """The reloader spawns the server; a change to a watched file ends that server (SIGTERM) and spawns the
    next. No batch leaves on its own: each server's spans, the last requests' too, leave at its stop."""
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    apps = shutil.copytree(APPS, tmp_path / "apps", ignore=shutil.ignore_patterns("__pycache__"))
    port = free_port()
    argv = [
        test_python,
        "-m",
        "uvicorn",
        "shop:app",
        "--app-dir",
        str(apps),
        "--port",
        str(port),
        "--reload",
        "--reload-dir",
        str(apps),
    ]
    env = {**setup_env(grpc_receiver.endpoint, "zero-code"), "OTEL_BSP_SCHEDULE_DELAY": BATCH_DELAY_MS}
    reloader = subprocess.Popen(
        command("zero-code", argv), env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "uvicorn.log", "w")
    )
    answered: dict[int, int] = {}

    def ask_until(servers: int, per_server: int = 5, timeout: float = 40) -> None:
        """GET /?n=<n> until `servers` pids answered, the last of them `per_server` times."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = list(dict.fromkeys(answered.values()))
            if len(pids) == servers and list(answered.values()).count(pids[-1]) >= per_server:
                return
            try:
                answered[len(answered)] = int(httpx.get(f"http://127.0.0.1:{port}/?n={len(answered)}", timeout=5).text)
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"answers: {answered}")

    def request_spans() -> dict[int, object]:
        found = {request_number(s): s for s in grpc_receiver.spans if s.service == "shop" and s.kind == SERVER}
        return found if found.keys() >= answered.keys() else {}

    try:
        ask_until(servers=1)
        (apps / "shop.py").write_text((apps / "shop.py").read_text() + "\n# changed: uvicorn reloads\n")
        ask_until(servers=2)  # asking on while the first server stops
    finally:
        stop(reloader)
    # Each server held its spans until SIGTERM stopped it (the reload, then the reloader's stop).
    spans = grpc_receiver.wait_for(lambda _: request_spans())
    first, second = dict.fromkeys(answered.values())
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p) for p in (first, second, reloader.pid)))
    assert reloader.pid not in (first, second)
    assert_each_names_its_worker(grpc_receiver, {n: spans[n] for n in answered}, answered, reloader.pid)
    assert_children_of(grpc_receiver, {first, second}, reloader.pid)
    (ended,), (started,) = grpc_receiver.of_pid(first), grpc_receiver.of_pid(second)
    assert ended.end_ns <= started.start_ns, "the first server's lifetime ends before the next one starts"
    assert ended.name == started.name == "uvicorn worker"
    assert grpc_receiver.of_pid(reloader.pid)[0].name == "uvicorn"
    assert (
        ended.attributes["otelproc.exit.reason"]
        == f"stopped by SIGTERM from pid {reloader.pid} ({ended.attributes['process.executable.name']})"
    )
