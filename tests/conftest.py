"""Shared fixtures: the real probe on the real kernel, and the interpreter tests spawn.

The kernel tests (every test outside tests/unit) need root (or CAP_BPF + CAP_PERFMON)
and a kernel with BTF. They never skip: when any of them is selected and those are
missing, the session stops with the reason. The unit tests (tests/unit) need neither,
so this file imports nothing of the kernel side at its top: a fixture that loads a
probe imports it when it runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

from otelproc.clock import BootClock
from otelproc.config import parse_match
from otelproc.model import ProcessEvent

if TYPE_CHECKING:
    from otlp_receiver import GrpcReceiver, HttpReceiver

    from otelproc.kernel.probe import ProbeConfig

# The interpreter itself: `python3` on PATH may be a pyenv shim (a bash script) whose
# helper processes would show up as events of their own.
PYTHON = os.path.realpath(sys.executable)
REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "tests" / "unit"  # tests that need no privilege, no kernel BTF and no BPF load
# Processes the run tests spawn run a copy of PYTHON with a name of their own (test_python),
# so that a sidecar matching only that name sees them and not the test runner. The name is
# this session's own (15 bytes, the kernel's limit): another test session on the same host
# runs its subjects under another, and a sidecar here never counts them.
TEST_COMM = f"python-otp{os.getpid() % 100000:05d}"
MATCH_TEST = ("--match", TEST_COMM, "--adopt", "false")


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
        pytest.exit("the kernel tests need " + " and ".join(problems) + "; they do not skip."
                    " The unit tests need neither: python3 -m pytest tests/unit", returncode=3)


BPFFS_PREFIX = "otelproc-bpffs-"  # + the pid of the test session that mounted it


def sweep_killed_sessions() -> None:
    """A session killed before its teardown (SIGKILL, a timeout) leaves its bpffs mounted and the probes
    pinned there attached: the next session removes them, for a session whose pid no longer runs."""
    from otelproc.kernel import pins

    for mount in Path(tempfile.gettempdir()).glob(BPFFS_PREFIX + "*"):
        pid = mount.name[len(BPFFS_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        if pins.on_bpffs(mount):
            for pin_dir in (d for d in mount.iterdir() if d.is_dir()):
                pins.remove_all(pin_dir)
            subprocess.run(["umount", "-l", str(mount)], check=False)
        os.rmdir(mount)


class PinRoot:
    """A bpffs of the test session's own (a tmp mount), so no test touches /sys/fs/bpf/otelproc.

    Every sidecar pins under a directory of its own here. At the end of the
    session nothing may be left: no pin, no program of a pin still loaded, and
    no /sys/fs/bpf/otelproc that was not there before.
    """

    def __init__(self) -> None:
        from otelproc.kernel import libbpf, pins

        sweep_killed_sessions()
        self.path: Path | None = Path(tempfile.mkdtemp(prefix=f"{BPFFS_PREFIX}{os.getpid()}-"))
        self.prog_ids: set[int] = set()
        self.production_existed = Path(pins.BPFFS_ROOT, "otelproc").exists()
        try:
            libbpf.mount_bpffs(str(self.path))
        except OSError:  # no CAP_SYS_ADMIN (the least-privilege run): the sidecars do not pin
            os.rmdir(self.path)
            self.path = None

    def new_dir(self) -> str:
        """A pin directory for one sidecar (or two that share it); "" (no pinning) without a bpffs."""
        return "" if self.path is None else str(self.path / uuid.uuid4().hex[:12])

    def note(self, pin_dir: str | os.PathLike) -> None:
        """Remembers the programs pinned in pin_dir, to check at the end that they are gone."""
        from otelproc.kernel import pins

        for probe_dir in pins.probes(Path(pin_dir)):
            try:
                self.prog_ids.update(pins.prog_ids(probe_dir))
            except OSError:
                pass

    def remove(self, pin_dir: str | os.PathLike) -> None:
        """What `otelproc detach` does, for a teardown that must not fail half way."""
        from otelproc.kernel import pins

        if pin_dir:
            self.note(pin_dir)
            pins.remove_all(Path(pin_dir))

    def leftovers(self) -> list[str]:
        from otelproc.kernel import libbpf, pins

        found = []
        if self.path is not None:
            for probe_dir in sorted(self.path.glob("*/*")):
                found.append(f"pinned probe left: {probe_dir} ({', '.join(p.name for p in probe_dir.iterdir())})")
                self.remove(probe_dir.parent)
        time.sleep(0.1)  # a link is released after its last reference, through RCU
        found += [f"BPF program {i} of a test's pinned probe is still loaded" for i in sorted(self.prog_ids)
                  if libbpf.prog_exists(i)]
        if not self.production_existed and Path(pins.BPFFS_ROOT, "otelproc").exists():
            found.append(f"a test pinned in {pins.BPFFS_ROOT}/otelproc, the production default")
        return found

    def close(self) -> None:
        if self.path is not None:
            subprocess.run(["umount", "-l", str(self.path)], check=False)
            os.rmdir(self.path)
            self.path = None


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


def proc_start_ticks(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat; the command name (field 2) may hold spaces."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


class SidecarProcess:
    """`otelproc run` as a real subprocess; its stderr is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], command: list[str] | None = None,
                 cwd: Path = REPO) -> None:
        self.args = args
        self.env = env
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            command or [PYTHON, "-m", "otelproc", "run", *args],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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

    def start(*args: str, endpoint: str | None = None, env: dict[str, str] | None = None,
              cwd: Path = REPO) -> SidecarProcess:
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
            loops.append(subprocess.Popen(["nice", "-n", "19", "sh", "-c", BUSY_LOOP], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield len(loops)
    finally:
        for loop in loops:  # nice execs the shell: each pid is its loop's
            loop.kill()
        for loop in loops:
            loop.wait()
