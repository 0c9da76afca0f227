"""The local stack as a person runs it: deploy/local/up.sh and down.sh, with the test's free ports, its own
directory and pin directory, and the session's interpreter name; the processes it started."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

import psutil

from support import REPO
from support.jaeger import JaegerSpan, find_spans
from support.ports import free_ports
from support.prometheus import Prometheus
from support.subjects import TEST_COMM

UP, DOWN = REPO / "deploy" / "local" / "up.sh", REPO / "deploy" / "local" / "down.sh"
PORT_VARIABLES = (
    "JAEGER_OTLP_GRPC_PORT",
    "JAEGER_OTLP_HTTP_PORT",
    "JAEGER_QUERY_HTTP_PORT",
    "JAEGER_QUERY_GRPC_PORT",
    "COLLECTOR_OTLP_GRPC_PORT",
    "COLLECTOR_OTLP_HTTP_PORT",
    "COLLECTOR_TELEMETRY_PORT",
    "COLLECTOR_PROMETHEUS_PORT",
    "PROMETHEUS_PORT",
    "DEMO_PORT",
)


def stack_env(stack_dir: Path, test_python: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELPROC_", "TRACE"))}
    env.update(zip(PORT_VARIABLES, map(str, free_ports(len(PORT_VARIABLES)))))
    env.update(OTELPROC_LOCAL_DIR=str(stack_dir), PYTHON=test_python, OTELPROC_MATCH=TEST_COMM, OTELPROC_ADOPT="false")
    env.update(COLLECTOR_SPANMETRICS_INTERVAL="1s")  # metrics in Prometheus within seconds, for the Monitor tab
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
    def prometheus(self) -> Prometheus:
        return Prometheus(f"http://127.0.0.1:{self.env['PROMETHEUS_PORT']}")

    @property
    def demo(self) -> str:
        return f"http://127.0.0.1:{self.env['DEMO_PORT']}"

    def pid(self, name: str) -> int:
        """The pid of what up.sh started as NAME (the demo: the uvicorn master)."""
        return int((self.dir / f"{name}.pid").read_text().split()[0])


def lifetime_span(query_url: str, pid: int, since: datetime.datetime) -> JaegerSpan | None:
    """The lifetime span of process PID of service demo, once Jaeger has it."""
    spans = find_spans(query_url, "demo", since)
    return next((s for s in spans if s.role == "lifetime" and s.attributes["process.pid"] == pid), None)


def kill_worker(stack: LocalStack, worker: int) -> None:
    """SIGKILL to a uvicorn worker of the demo up.sh started (checked: a child of its master)."""
    process = psutil.Process(worker)
    assert process.ppid() == stack.pid("demo"), f"{worker} is not a worker of the demo's master"
    process.kill()
