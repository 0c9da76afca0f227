"""Shared fixtures: the real probe on the real kernel, and the interpreter tests spawn.

The kernel tests need root (or CAP_BPF + CAP_PERFMON) and a kernel with BTF.
They never skip: where those are missing the session stops with the reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

from otelproc.checks import EVENTS_CAPS, missing_caps
from otelproc.clock import BootClock
from otelproc.decoder import ProcessEvent, decode
from otelproc.loader import Probe, ProbeConfig
from otelproc.matching import rules

if TYPE_CHECKING:
    from otlp_receiver import GrpcReceiver, HttpReceiver

# The interpreter itself: `python3` on PATH may be a pyenv shim (a bash script) whose
# helper processes would show up as events of their own.
PYTHON = os.path.realpath(sys.executable)
REPO = Path(__file__).resolve().parent.parent
# Processes the run tests spawn run a copy of PYTHON with a name of their own (test_python),
# so that a sidecar matching only that name sees them and not the test runner.
TEST_COMM = "python-otptest"
MATCH_TEST = ("--match", TEST_COMM, "--adopt", "false")


def pytest_sessionstart(session: pytest.Session) -> None:
    problems = []
    if missing_caps(EVENTS_CAPS):
        problems.append("root (or CAP_BPF and CAP_PERFMON)")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        problems.append("a kernel with BTF (/sys/kernel/btf/vmlinux)")
    if problems:
        pytest.exit("the kernel tests need " + " and ".join(problems) + "; they do not skip", returncode=3)


class EventCollector:
    """A Probe polled on a thread; tests wait for the events they expect."""

    def __init__(self, config: ProbeConfig) -> None:
        self.clock = BootClock()
        self.events: list[ProcessEvent] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.probe = Probe(config, self._on_record)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _on_record(self, raw: bytes) -> None:
        event = decode(raw, self.clock, self.probe.layout)
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.probe.poll(50)

    def wait_for(self, predicate: Callable[[list[ProcessEvent]], bool], timeout: float = 10.0) -> list[ProcessEvent]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; events so far: {self.events[-20:]}")
                self._cond.wait(left)
            return list(self.events)

    def of(self, pid: int, kind: str | None = None) -> list[ProcessEvent]:
        with self._cond:
            return [e for e in self.events if e.pid == pid and (kind is None or e.kind == kind)]

    def wait_exit(self, pid: int, timeout: float = 10.0) -> ProcessEvent:
        self.wait_for(lambda evs: any(e.pid == pid and e.kind == "exit" for e in evs), timeout)
        return self.of(pid, "exit")[0]

    def settle(self, seconds: float = 0.3) -> None:
        """Lets late events (there should be none) arrive before a test counts."""
        time.sleep(seconds)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.probe.close()


@pytest.fixture
def kernel_events() -> Iterator[Callable[..., EventCollector]]:
    """Starts collectors; every one is detached at teardown, even when the test fails."""
    started: list[EventCollector] = []

    def start(match: str = "python3.*", **kwargs: object) -> EventCollector:
        collector = EventCollector(ProbeConfig(match=rules(match), **kwargs))
        started.append(collector)
        return collector

    try:
        yield start
    finally:
        for collector in started:
            collector.close()


def proc_start_ticks(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat; the command name (field 2) may hold spaces."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


class SidecarProcess:
    """`otelproc run` as a real subprocess; its stderr is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], command: list[str] | None = None) -> None:
        self.args = args
        self.env = env
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            command or [PYTHON, "-m", "otelproc", "run", *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True).start()
        self.stdout_lines: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self.wait_line("ready;", timeout=30)  # attached, done adopting, /readyz answers 200

    def _read(self, stream) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self.stdout_lines.append(line)

    def wait_line(self, needle: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                if self.proc.poll() is not None and needle not in "".join(self.lines):
                    time.sleep(0.2)  # let the reader thread catch the last lines
                    raise AssertionError(f"otelproc exited {self.proc.returncode}: {self.lines}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {needle!r} from otelproc in {timeout} s: {self.lines}")
                self._cond.wait(min(left, 0.2))

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SidecarProcess]]:
    """Starts `otelproc run` subprocesses; each is stopped (SIGTERM, then SIGKILL) at teardown.

    Each gets a state file of its own unless the test passes --state-file (to share one).
    """
    started: list[SidecarProcess] = []

    def start(*args: str, endpoint: str | None = None, env: dict[str, str] | None = None) -> SidecarProcess:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELPROC_"))}
        full_env["OTELPROC_STATE_FILE"] = str(tmp_path_factory.mktemp("state") / "state.json")
        if endpoint:
            full_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        full_env.update(env or {})
        process = SidecarProcess(list(args), full_env)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            try:
                process.stop(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def grpc_receiver() -> Iterator["GrpcReceiver"]:
    from otlp_receiver import GrpcReceiver

    receiver = GrpcReceiver()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def http_receiver() -> Iterator["HttpReceiver"]:
    from otlp_receiver import HttpReceiver

    receiver = HttpReceiver()
    try:
        yield receiver
    finally:
        receiver.stop()


def python_named(directory: Path, name: str) -> str:
    """PYTHON as an executable file named `name`: the kernel side matches the name of the file an exec
    loads (symlinks resolved), so a symlink would not do. A copy in a venv (--copies) made in
    `directory`, so that it finds its standard library and sees the installed packages."""
    subprocess.run([PYTHON, "-m", "venv", "--copies", "--system-site-packages", "--without-pip", str(directory)],
                   check=True)
    python = directory / "bin" / name
    (directory / "bin" / os.path.basename(PYTHON)).rename(python)
    return str(python)


@pytest.fixture(scope="session")
def test_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An interpreter whose executable file is named TEST_COMM; removed with pytest's other temporary files."""
    return python_named(tmp_path_factory.mktemp("venv"), TEST_COMM)
