"""The local stack without Docker, as a person runs it: deploy/local/up.sh, a request, Jaeger's API, down.sh.

up.sh starts Jaeger, the Collector, otelproc and the demo app as processes on loopback;
the test moves every port to a free one and the pid files to its own directory (the
variables the docs name), and tracks only its own interpreter name. down.sh must stop
everything up.sh started, children included.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import psutil
import pytest

from support import REPO
from support.subjects import TEST_COMM
from otelproc.kernel import pins
from support.ports import free_ports
from test_jaeger_e2e import SERVER, JaegerSpan, find_spans, flatten, path_of, request_spans, wait_for

UP, DOWN = REPO / "deploy" / "local" / "up.sh", REPO / "deploy" / "local" / "down.sh"
PORT_VARIABLES = ("JAEGER_OTLP_GRPC_PORT", "JAEGER_OTLP_HTTP_PORT", "JAEGER_QUERY_HTTP_PORT", "JAEGER_QUERY_GRPC_PORT",
                  "COLLECTOR_OTLP_GRPC_PORT", "COLLECTOR_OTLP_HTTP_PORT", "COLLECTOR_TELEMETRY_PORT", "DEMO_PORT")


def stack_env(stack_dir: Path, test_python: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELPROC_", "TRACE"))}
    env.update(zip(PORT_VARIABLES, map(str, free_ports(len(PORT_VARIABLES)))))
    env.update(OTELPROC_LOCAL_DIR=str(stack_dir), PYTHON=test_python, OTELPROC_MATCH=TEST_COMM, OTELPROC_ADOPT="false")
    return env


def sessions(stack_dir: Path) -> list[psutil.Process]:
    """Every process in the sessions up.sh started (one per pid file); psutil.Process remembers start times."""
    leaders = {int(f.read_text().split()[0]) for f in stack_dir.glob("*.pid")}
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) in leaders:
                found.append(process)
        except (ProcessLookupError, PermissionError):
            pass
    return found


def running(process: psutil.Process) -> bool:
    """Still running: not gone, not a zombie waiting to be reaped (that is an ended process)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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

        (request,), processes = wait_for(request_and_processes, "the /spawn request span and the 'started' spans "
                                         "of the uvicorn master and the worker that served it", timeout=90)
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


class LocalStack:
    """deploy/local/up.sh and down.sh as a person runs them, with the test's ports, directory and
    interpreter; the `local_stack` fixture brings it down whatever the test did."""

    def __init__(self, stack_dir: Path, test_python: str, pin_dir: str) -> None:
        self.dir, self.test_python, self.pin_dir = stack_dir, test_python, pin_dir
        self.env: dict[str, str] = {}

    def up(self) -> str:
        """up.sh; what it printed. Another program taking a free port chosen here means new ones."""
        for _ in range(3):
            self.env = {**stack_env(self.dir, self.test_python), "OTELPROC_PIN_DIR": self.pin_dir}
            up = subprocess.run([str(UP)], env=self.env, capture_output=True, text=True, timeout=900)
            if "is taken; set" not in up.stderr:
                break
        assert up.returncode == 0, up.stdout + up.stderr
        return up.stdout

    def down(self) -> str:
        down = subprocess.run([str(DOWN)], env=self.env, capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr
        return down.stdout

    @property
    def jaeger(self) -> str:
        return f"http://127.0.0.1:{self.env['JAEGER_QUERY_HTTP_PORT']}"

    @property
    def demo(self) -> str:
        return f"http://127.0.0.1:{self.env['DEMO_PORT']}"

    def pid(self, name: str) -> int:
        """The pid of what up.sh started as NAME (the demo: the uvicorn master)."""
        return int((self.dir / f"{name}.pid").read_text().split()[0])


@pytest.fixture
def local_stack(tmp_path: Path, test_python: str, pin_root) -> Iterator[LocalStack]:
    stack = LocalStack(tmp_path / "stack", test_python, pin_root.new_dir())
    try:
        yield stack
    finally:
        for log in sorted(stack.dir.glob("*.log")):  # shown by pytest when the test fails
            print(f"--- {log.name}", *log.read_text(errors="replace").splitlines()[-15:], sep="\n")
        started = sessions(stack.dir)
        if stack.env:
            subprocess.run([str(DOWN)], env=stack.env, capture_output=True, timeout=300)
        for process in started:  # ours (psutil checks the start time)
            if running(process):
                process.kill()
        pin_root.remove(stack.pin_dir)


def lifetime_span(query_url: str, pid: int, since: datetime.datetime) -> JaegerSpan | None:
    """The lifetime span of process PID of service demo, once Jaeger has it."""
    spans = find_spans(query_url, "demo", since)
    return next((s for s in spans if s.role == "lifetime" and s.attributes["process.pid"] == pid), None)


def kill_worker(stack: LocalStack, worker: int) -> None:
    """SIGKILL to a uvicorn worker of the demo up.sh started (checked: a child of its master)."""
    process = psutil.Process(worker)
    assert process.ppid() == stack.pid("demo"), f"{worker} is not a worker of the demo's master"
    process.kill()


def test_traces_survive_a_restart_of_the_stack(local_stack):
    since = datetime.datetime.now(datetime.timezone.utc)
    local_stack.up()
    worker = httpx.get(f"{local_stack.demo}/", timeout=30).json()["worker"]
    kill_worker(local_stack, worker)
    before = wait_for(lambda: lifetime_span(local_stack.jaeger, worker, since),
                      "the killed worker's lifetime span in Jaeger", timeout=90)
    assert before.status_message.startswith("killed by SIGKILL")

    assert "down" in local_stack.down()
    assert any((local_stack.dir / "jaeger-data").rglob("*.vlog")), "Badger's files are in the stack's directory"
    local_stack.up()
    response = httpx.get(f"{local_stack.jaeger}/api/v3/traces/{before.trace_id}", timeout=10)
    assert response.status_code == 200, f"the process trace is gone after a restart: {response.text[:300]}"
    after = {(s.span_id, s.name, s.status_message) for s in flatten(response.json()["result"])}
    assert (before.span_id, "uvicorn worker", before.status_message) in after
