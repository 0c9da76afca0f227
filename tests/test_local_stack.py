"""The local stack without Docker, as a person runs it: deploy/local/up.sh, a request, Jaeger's API, down.sh.

up.sh starts Jaeger, the Collector, otelproc and the demo app as processes on loopback;
the test moves every port to a free one and the pid files to its own directory (the
variables the docs name), and tracks only its own interpreter name. down.sh must stop
everything up.sh started, children included.
"""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import httpx
import psutil

from otelproc.kernel import pins
from support.jaeger import SERVER, find_spans, flatten, path_of, request_spans, wait_for
from support.local_stack import DOWN, UP, kill_worker, lifetime_span, running, sessions, stack_env
from support.subjects import TEST_COMM


def test_up_request_spans_in_jaeger_down_leaves_nothing(tmp_path, test_python, pin_root):
    stack_dir = tmp_path / "stack"
    pin_dir = pin_root.new_dir()  # the session's bpffs, not the host's
    since = datetime.datetime.now(datetime.timezone.utc)
    for _ in range(3):  # a free port chosen here may be taken by another program before up.sh checks it
        env = {**stack_env(stack_dir, test_python), "OTELPROC_PIN_DIR": pin_dir}
        up = subprocess.run([str(UP)], env=env, capture_output=True, text=True, timeout=600)
        if "is taken; set" not in up.stderr:
            break
    started: list[psutil.Process] = []
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{env['DEMO_PORT']}/" in up.stdout and "deploy/local/down.sh" in up.stdout
        started = sessions(stack_dir)
        names = {p.name() for p in started}
        assert {"jaeger", TEST_COMM} <= names
        master = int((stack_dir / "demo.pid").read_text().split()[0])

        demo = f"http://127.0.0.1:{env['DEMO_PORT']}"
        body = httpx.get(f"{demo}/spawn", timeout=30).json()
        worker = body["worker"]

        def request_and_processes() -> list | None:
            spans = find_spans(f"http://127.0.0.1:{env['JAEGER_QUERY_HTTP_PORT']}", "demo", since)
            requests = [s for s in request_spans(spans) if path_of(s) == "/spawn"]
            started_spans = {s.attributes["process.pid"]: s for s in spans if s.role == "started"}
            return (requests, started_spans) if requests and {master, worker} <= started_spans.keys() else None

        (request,), processes = wait_for(
            request_and_processes,
            "the /spawn request span and the 'started' spans of the uvicorn master and the worker that served it",
            timeout=90,
        )
        assert request.kind == SERVER and request.resource["process.pid"] == worker
        assert processes[master].name == "uvicorn started"
        # The request links to its worker's process span: the worker's 'started' span, under the master's.
        worker_span = processes[worker]
        assert worker_span.name == "uvicorn worker started"
        assert worker_span.parent_span_id == processes[master].span_id
        assert (worker_span.trace_id, worker_span.span_id) in [(t, s) for t, s, _ in request.links]
    finally:
        for log in sorted(stack_dir.glob("*.log")):  # shown by pytest when the test fails
            print(f"--- {log.name}", *log.read_text(errors="replace").splitlines()[-15:], sep="\n")
        started = started or sessions(stack_dir)
        down = subprocess.run([str(DOWN)], env=env, capture_output=True, text=True, timeout=300)
        pinned = pin_dir and pins.probes(Path(pin_dir))
        pin_root.remove(pin_dir)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not pinned, "down.sh detaches otelproc's pinned probe"
    left = [p for p in started if running(p)]
    for process in left:  # ours (psutil checks the start time): not left behind even when the test fails
        process.kill()
    assert left == [], f"down.sh left running: {left}"
    assert not list(stack_dir.glob("*.pid"))


def test_traces_survive_a_restart_of_the_stack(local_stack):
    since = datetime.datetime.now(datetime.timezone.utc)
    local_stack.up()
    worker = httpx.get(f"{local_stack.demo}/", timeout=30).json()["worker"]
    kill_worker(local_stack, worker)
    before = wait_for(
        lambda: lifetime_span(local_stack.jaeger, worker, since),
        "the killed worker's lifetime span in Jaeger",
        timeout=90,
    )
    assert before.status_message.startswith("killed by SIGKILL")

    assert "down" in local_stack.down()
    assert any((local_stack.dir / "jaeger-data").rglob("*.vlog")), "Badger's files are in the stack's directory"
    local_stack.up()
    response = httpx.get(f"{local_stack.jaeger}/api/v3/traces/{before.trace_id}", timeout=10)
    assert response.status_code == 200, f"the process trace is gone after a restart: {response.text[:300]}"
    after = {(s.span_id, s.name, s.status_message) for s in flatten(response.json()["result"])}
    assert (before.span_id, "uvicorn worker", before.status_message) in after
