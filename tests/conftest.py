"""Shared fixtures: the real probe on the real kernel, and the interpreter tests spawn.

The kernel tests (every test outside tests/unit) need root (or CAP_BPF + CAP_PERFMON)
and a kernel with BTF. They never skip: when any of them is selected and those are
missing, the session stops with the reason. The unit tests (tests/unit) need neither,
so this file imports nothing of the kernel side at its top: a fixture that loads a
probe imports it when it runs.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

# The helpers in tests/support assert too: their failures say what differs, as a test's do.
pytest.register_assert_rewrite("support")

from otelproc.clock import BootClock  # noqa: E402 -- after the registration above, as every import below
from otelproc.config import parse_match  # noqa: E402
from otelproc.model import ProcessEvent  # noqa: E402
from support import REPO  # noqa: E402
from support.sidecar import PinRoot, SidecarProcess  # noqa: E402
from support.subjects import LONE_COMM, TEST_COMM, python_named  # noqa: E402

if TYPE_CHECKING:
    from support.jaeger import Backend
    from support.jaeger_ui import JaegerUI
    from support.local_stack import LocalStack
    from support.otlp_receiver import GrpcReceiver, HttpReceiver

    from otelproc.kernel.probe import ProbeConfig

UNIT = REPO / "tests" / "unit"  # tests that need no privilege, no kernel BTF and no BPF load


def is_kernel_test(item: pytest.Item) -> bool:
    return UNIT not in item.path.parents


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stops the session before any test runs when a kernel test is selected and cannot run here."""
    if not any(is_kernel_test(item) for item in session.items):
        return
    from otelproc.kernel.checks import EVENTS_CAPS, missing_caps

    problems = []
    if missing_caps(EVENTS_CAPS):
        problems.append("root (or CAP_BPF and CAP_PERFMON)")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        problems.append("a kernel with BTF (/sys/kernel/btf/vmlinux)")
    if problems:
        pytest.exit(
            "the kernel tests need " + " and ".join(problems) + "; they do not skip."
            " The unit tests need neither: python3 -m pytest tests/unit",
            returncode=3,
        )


@pytest.fixture(scope="session")
def pin_root() -> Iterator[PinRoot]:
    """The session's bpffs; fails the session loudly if any test leaves a probe behind."""
    root = PinRoot()
    try:
        yield root
        left = root.leftovers()
        assert not left, "otelproc probes left behind by the tests:\n" + "\n".join(left)
    finally:
        root.close()


@pytest.fixture(autouse=True)
def kernel_test(request: pytest.FixtureRequest) -> None:
    """Every kernel test runs inside the session's bpffs (pin_root); a unit test has none."""
    if is_kernel_test(request.node):
        request.getfixturevalue("pin_root")


class EventCollector:
    """A Probe polled on a thread; tests wait for the events they expect."""

    def __init__(self, config: ProbeConfig) -> None:
        from otelproc.kernel.probe import Probe

        self.clock = BootClock()
        self.events: list[ProcessEvent] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.probe = Probe(config, self._on_record)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _on_record(self, raw: bytes) -> None:
        from otelproc.kernel.decoder import decode

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
        from otelproc.kernel.probe import ProbeConfig

        collector = EventCollector(ProbeConfig(match=parse_match(match), **kwargs))
        started.append(collector)
        return collector

    try:
        yield start
    finally:
        for collector in started:
            collector.close()


def sidecar_env(tmp_path_factory: pytest.TempPathFactory, pin_root: PinRoot) -> dict[str, str]:
    """The environment of a test's `otelproc run`: no OTEL_*/OTELPROC_* of the caller's, a state
    file and a pin directory of its own (under the session's bpffs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELPROC_"))}
    env["OTELPROC_STATE_FILE"] = str(tmp_path_factory.mktemp("state") / "state.json")
    env["OTELPROC_PIN_DIR"] = pin_root.new_dir()
    return env


def pin_dir_of(args: list[str], env: dict[str, str]) -> str:
    """Where a sidecar started with args and env pins its probe ("" for nowhere)."""
    for i, arg in enumerate(args):
        if arg == "--pin-dir":
            return args[i + 1]
    return env.get("OTELPROC_PIN_DIR", "")


@pytest.fixture
def sidecar(tmp_path_factory: pytest.TempPathFactory, pin_root: PinRoot) -> Iterator[Callable[..., SidecarProcess]]:
    """Starts `otelproc run` subprocesses; at teardown each is stopped (SIGTERM, then SIGKILL)
    and its pinned probe removed, even when the test failed.

    Each gets a state file and a pin directory of its own unless the test passes
    --state-file / --pin-dir (to share one). cwd: the tree whose otelproc runs.
    """
    started: list[SidecarProcess] = []
    pin_dirs: list[str] = []

    def start(
        *args: str, endpoint: str | None = None, env: dict[str, str] | None = None, cwd: Path = REPO
    ) -> SidecarProcess:
        full_env = sidecar_env(tmp_path_factory, pin_root)
        if endpoint:
            full_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        full_env.update(env or {})
        pin_dirs.append(pin_dir_of(list(args), full_env))
        process = SidecarProcess(list(args), full_env, cwd=cwd)
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
        for pin_dir in pin_dirs:
            pin_root.remove(pin_dir)


@pytest.fixture
def grpc_receiver() -> Iterator["GrpcReceiver"]:
    from support.otlp_receiver import GrpcReceiver

    receiver = GrpcReceiver()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def http_receiver() -> Iterator["HttpReceiver"]:
    from support.otlp_receiver import HttpReceiver

    receiver = HttpReceiver()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture(scope="module")
def lone_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An interpreter whose executable file is named LONE_COMM, which no other test's subjects run under."""
    return python_named(tmp_path_factory.mktemp("venv"), LONE_COMM)


@pytest.fixture(scope="session")
def test_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An interpreter whose executable file is named TEST_COMM; removed with pytest's other temporary files."""
    return python_named(tmp_path_factory.mktemp("venv"), TEST_COMM)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator["Backend"]:
    """Jaeger all-in-one and the Collector of collector-config.yaml in front of it, on loopback."""
    from support.jaeger import running_backend

    yield from running_backend(tmp_path)


@pytest.fixture
def ui_backend(tmp_path: Path) -> Iterator["Backend"]:
    """The same, with Jaeger serving the Jaeger UI (jaeger-ui v1.76.0, from assets_path)."""
    from support.jaeger import running_backend
    from support.jaeger_ui import ui_assets

    overlay = tmp_path / "ui.yaml"
    overlay.write_text(f"extensions:\n  jaeger_query:\n    ui:\n      assets_path: {ui_assets()}\n")
    yield from running_backend(tmp_path, overlay)


@pytest.fixture
def ui(ui_backend: "Backend", tmp_path: Path) -> Iterator["JaegerUI"]:
    """Headless Chromium on ui_backend's UI, its window tall enough for a trace with every span's
    detail open; its screenshots go to the test's temporary directory."""
    from support.jaeger_ui import JaegerUI, require_browser

    require_browser()
    with JaegerUI(ui_backend.query_url, tmp_path, width=1400, height=2400) as browser:
        yield browser


@pytest.fixture(scope="session")
def validator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/kubernetes/validate, built once a session."""
    from support.deploy import build_validator

    return build_validator(tmp_path_factory.mktemp("validate"))


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where a browser test saves its screenshots: JAEGER_UI_SCREENSHOTS (docs/images, to refresh the
    docs' pictures), else the test's temporary directory. The browser is checked first."""
    from support.jaeger_ui import require_browser

    require_browser()
    return Path(os.environ.get("JAEGER_UI_SCREENSHOTS", tmp_path / "screenshots"))


@pytest.fixture
def local_stack(tmp_path: Path, test_python: str, pin_root: PinRoot) -> Iterator["LocalStack"]:
    """deploy/local/up.sh and down.sh with the test's ports, directory and interpreter; brought down at
    teardown, whatever the test did: what down.sh leaves is killed and the pin directory emptied."""
    from support.local_stack import DOWN, LocalStack, running, sessions

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


# A build beside the tests, in small: spinning, and starting a short-lived process now and then, whose
# wake-ups preempt whatever runs; at nice 19, so that the tests' own processes still get their share.
BUSY_LOOP = "while :; do i=0; while [ $i -lt 300 ]; do i=$((i+1)); done; /bin/true; done"


@pytest.fixture
def busy_cores() -> Iterator[int]:
    """Keeps every core busy for the duration of the test (one BUSY_LOOP per core); yields how many run.
    Figures the kernel counts (CPU time, context switches) must hold on a loaded machine too."""
    loops: list[subprocess.Popen] = []
    try:
        for _ in range(os.cpu_count() or 1):
            loops.append(
                subprocess.Popen(
                    ["nice", "-n", "19", "sh", "-c", BUSY_LOOP],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        yield len(loops)
    finally:
        for loop in loops:  # nice execs the shell: each pid is its loop's
            loop.kill()
        for loop in loops:
            loop.wait()
