"""What every benchmark shares: the machine it ran on, the C programs, a lean OTLP receiver,
`otelproc run` and bpftrace as subprocesses, and writing results as JSON and Markdown.

The benchmarks spawn the real interpreter (not the `python3` on PATH, which may be a pyenv
shim: a bash script whose helper processes would be part of what is measured) and run
otelproc from this working tree, so a result belongs to the commit it names.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / "work"  # build output and quick-run results; ignored by git
RESULTS = BENCH / "results"
QUICK_RESULTS = WORK / "results-quick"
PYTHON = os.path.realpath(sys.executable)
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The tiny program under two names: the kernel side matches the name of the file an exec loads,
# so the same binary is tracked as MATCHED and ignored as UNMATCHED by `--match MATCHED`.
MATCHED = "otpbench"
UNMATCHED = "otpnomatch"
STORM = "otpstorm"  # the driver; its own name matches nothing

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
METRICS_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"


# ---------------------------------------------------------------- machine and command line


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _command(*args: str) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=REPO).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def tracing_programs() -> int:
    """Tracing BPF programs loaded right now: other tracers on the machine make the numbers noisier."""
    listing = _command("bpftool", "-j", "prog", "show")
    try:
        programs = json.loads(listing) if listing else []
    except json.JSONDecodeError:
        return -1
    return sum(1 for p in programs if p.get("type") in ("tracing", "tracepoint", "raw_tracepoint"))


def git_commit() -> str:
    """HEAD, with -dirty when the product's files differ from it (read-only: takes no index lock)."""
    commit = _command("git", "rev-parse", "--short=12", "HEAD") or "unknown"
    changed = _command("git", "--no-optional-locks", "status", "--porcelain", "--", "otelproc", "bpf", "pyproject.toml")
    return commit + ("-dirty" if changed else "")


def machine() -> dict[str, Any]:
    """Where a result was measured; every result file carries it."""
    cpu = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    sdk = _command(PYTHON, "-c", "from importlib.metadata import version; print(version('opentelemetry-sdk'))")
    return {
        "kernel": platform.release(),
        "cpu": cpu.group(1) if cpu else platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "otelproc_commit": git_commit(),
        "opentelemetry_sdk": sdk,
        "bpftrace": _command("bpftrace", "--version"),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_at_start": _read("/proc/loadavg").split()[:3],
        "tracing_bpf_programs_at_start": tracing_programs(),
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['date_utc']}; Linux {m['kernel']}; {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
        f"{m['python']}; opentelemetry-sdk {m['opentelemetry_sdk']}; otelproc {m['otelproc_commit']}; "
        f"load average at start {' '.join(m['loadavg_at_start'])}; "
        f"{m['tracing_bpf_programs_at_start']} tracing BPF programs of others loaded at start"
    )


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short smoke run; results go to bench/work/results-quick/")
    p.add_argument("--out", type=Path, help="where results go (default bench/results/, or bench/work/results-quick/)")
    return p


def out_dir(args: argparse.Namespace) -> Path:
    path = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("the benchmarks load BPF programs: run them as root")


# ---------------------------------------------------------------- the C programs


@dataclass(frozen=True)
class Programs:
    storm: Path
    matched: Path
    unmatched: Path
    static: bool  # whether the tiny program is linked statically (the cheaper exec, the harder case)


def compile_c(source: Path, target: Path, *flags: str) -> bool:
    if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
        return True
    result = subprocess.run(
        ["cc", "-O2", "-Wall", "-Wextra", *flags, "-o", str(target), str(source)], capture_output=True, text=True
    )
    return result.returncode == 0


def build() -> Programs:
    """Compiles bench/c/ into bench/work/ (again only when a source changed)."""
    WORK.mkdir(parents=True, exist_ok=True)
    storm = WORK / STORM
    if not compile_c(BENCH / "c" / "storm.c", storm):
        sys.exit("cc could not build bench/c/storm.c (install gcc and libc6-dev)")
    tiny = WORK / "tiny"
    static = compile_c(BENCH / "c" / "tiny.c", tiny, "-static")
    if not static and not compile_c(BENCH / "c" / "tiny.c", tiny):
        sys.exit("cc could not build bench/c/tiny.c")
    for name in (MATCHED, UNMATCHED):
        if not (WORK / name).exists() or (WORK / name).stat().st_mtime < tiny.stat().st_mtime:
            shutil.copy2(tiny, WORK / name)
    linked = _command("file", "-b", str(tiny))
    return Programs(storm, WORK / MATCHED, WORK / UNMATCHED, "statically linked" in linked or static)


@dataclass(frozen=True)
class StormResult:
    elapsed_ns: int
    iterations: int
    jobs: int
    failures: int
    started: float  # time.time() just before the driver was started
    finished: float

    @property
    def rate(self) -> float:
        """Lifetimes per second the driver achieved."""
        return self.iterations / (self.elapsed_ns / 1e9)


def storm(
    programs: Programs, program: Path, iterations: int, jobs: int = 1, rate: float = 0, wrapper: Sequence[str] = ()
) -> StormResult:
    """Runs the driver to the end; it reports its own wall time, free of Python's start-up.
    `wrapper` runs it elsewhere, e.g. nsenter into another pid namespace."""
    started = time.time()
    result = subprocess.run(
        [*wrapper, str(programs.storm), str(iterations), str(program), str(jobs), f"{rate:.3f}"],
        capture_output=True,
        text=True,
        check=False,
    )
    finished = time.time()
    if result.returncode not in (0, 1) or not result.stdout:
        raise RuntimeError(f"storm driver failed ({result.returncode}): {result.stderr.strip()}")
    report = json.loads(result.stdout)
    if report["failures"]:
        raise RuntimeError(f"{report['failures']} of the storm's children did not exit 0")
    return StormResult(
        report["elapsed_ns"], report["iterations"], report["jobs"], report["failures"], started, finished
    )


# ---------------------------------------------------------------- the OTLP receiver


class Receiver:
    """An OTLP/gRPC trace receiver that only counts spans and notes when each request arrived.

    Requests stay raw bytes (kept only when keep=True, for latencies); a request is parsed
    to count its spans, but no Python object is built per span while a benchmark runs, so
    the receiver takes as little CPU as it can from the machine being measured.
    """

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.spans = 0
        self.requests = 0
        self.arrivals: list[tuple[int, int]] = []  # (time.time_ns() at arrival, spans in the request)
        self.payloads: list[tuple[int, bytes]] = []
        self._cond = threading.Condition()
        handlers = (
            grpc.method_handlers_generic_handler(
                TRACE_SERVICE,
                {"Export": grpc.unary_unary_rpc_method_handler(self._export)},  # raw bytes in and out
            ),
            grpc.method_handlers_generic_handler(
                METRICS_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(self._export_metrics)}
            ),
        )
        self._server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=2),
            handlers=handlers,
            options=[("grpc.max_receive_message_length", 64 << 20)],
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _export(self, body: bytes, _context: grpc.ServicerContext) -> bytes:
        arrived = time.time_ns()
        request = ExportTraceServiceRequest.FromString(body)
        count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self._cond:
            self.spans += count
            self.requests += 1
            self.arrivals.append((arrived, count))
            if self.keep:
                self.payloads.append((arrived, body))
            self._cond.notify_all()
        return b""  # an empty ExportTraceServiceResponse: all accepted

    @staticmethod
    def _export_metrics(_body: bytes, _context: grpc.ServicerContext) -> bytes:
        """otelproc's own metrics go to the same endpoint: accepted, not looked at."""
        return b""

    def wait_for(self, spans: int, timeout: float, idle: float | None = None) -> bool:
        """Waits until `spans` spans arrived; gives up after `timeout` s, or after `idle` s without any."""
        deadline = time.monotonic() + timeout
        with self._cond:
            last_count, last_change = self.spans, time.monotonic()
            while self.spans < spans:
                now = time.monotonic()
                if self.spans != last_count:
                    last_count, last_change = self.spans, now
                if now >= deadline or (idle is not None and now - last_change >= idle):
                    return False
                self._cond.wait(min(0.2, deadline - now))
            return True

    def reset(self) -> None:
        with self._cond:
            self.spans = self.requests = 0
            self.arrivals.clear()
            self.payloads.clear()

    def latencies_ns(self) -> list[int]:
        """Per span: its arrival here minus its end time (a lifetime span ends at the process's exit)."""
        out = []
        for arrived, body in self.payloads:
            request = ExportTraceServiceRequest.FromString(body)
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    out.extend(arrived - s.end_time_unix_nano for s in ss.spans)
        return out

    def stop(self) -> None:
        self._server.stop(grace=None).wait()


# ---------------------------------------------------------------- processes we start


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (every thread), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    match = re.search(r"^VmRSS:\s*(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) * 1024 if match else 0


def bpf_map_rss_bytes(pid: int) -> int:
    """The part of RSS that is BPF maps mapped into the process: chiefly the ring buffer, whose
    data pages libbpf maps twice (for wrap-around), so a 16 MiB ring shows as up to 32 MiB."""
    total, in_map = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            in_map = line.endswith("anon_inode:bpf-map")
        elif in_map and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


class RssSampler:
    """Samples a process's RSS and CPU (and, if given, a running count) on a thread, so that
    peaks under load and trends over a long run are seen."""

    def __init__(self, pid: int, every: float, count: Callable[[], int] | None = None) -> None:
        self.pid = pid
        self.every = every
        self.count = count
        self.samples: list[tuple[float, int, float, int]] = []  # (monotonic, rss bytes, cpu seconds, count)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> bool:
        try:
            rss, cpu = rss_bytes(self.pid), cpu_seconds(self.pid)
        except (OSError, IndexError):  # the process is gone
            return False
        self.samples.append((time.monotonic(), rss, cpu, self.count() if self.count else 0))
        return True

    def _run(self) -> None:
        while not self._stop.is_set() and self._sample():
            self._stop.wait(self.every)

    def stop(self) -> list[tuple[float, int, float, int]]:
        """Stops sampling, with one last sample taken now."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.samples


class LineReader:
    """Reads a child's text stream on a thread, noting when each line came."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[tuple[float, str]] = []  # (monotonic, line)
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: Any) -> None:
        for line in stream:
            with self._cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, needle: str, timeout: float, alive: Callable[[], bool]) -> float:
        """The monotonic time the first line holding `needle` came; raises after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for when, line in self.lines:
                    if needle in line:
                        return when
                if not alive() and not self._thread.is_alive():
                    raise RuntimeError(f"exited before saying {needle!r}: {self.text()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no {needle!r} in {timeout} s: {self.text()}")
                self._cond.wait(min(left, 0.2))

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@dataclass
class StopReport:
    """What otelproc said about its run when it stopped."""

    returncode: int
    events: int | None
    spans: int | None
    still_running: int | None
    dropped: dict[str, int]  # by reason, from the "stopped; ..." line and the loss warnings before it
    other_warnings: list[str] = field(default_factory=list)

    @property
    def kernel_lost(self) -> int:
        """Records and processes the kernel side could not hand over."""
        return sum(v for k, v in self.dropped.items() if k in KERNEL_LOSSES)

    @property
    def dropped_nothing(self) -> bool:
        return not any(self.dropped.values())

    def dropped_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items()) if v) or "nothing"


KERNEL_LOSSES = ("ringbuf_full", "tracked_map_full", "unattended")
# "stopped; 40000 events, 20000 spans, 20000 exported, dropped: none; 0 processes still running"
# (and the older "stopped; 40000 events, 20000 spans, 0 processes still running"; "1 span", "1 process" when 1)
_STOPPED = re.compile(
    r"stopped; (\d+) events?, (\d+) spans?(?:, \d+ exported)?(?:, dropped: ([^;]*))?[,;] (\d+) process(?:es)? "
    r"still running"
)
_KEY_VALUE = re.compile(r"(\w+)=(\d+)")
# "kernel side dropped: ringbuf_full +3" (older) and "the kernel side dropped 3 (ringbuf_full), ..."
_KERNEL_OLD = re.compile(r"(\w+) \+(\d+)")
_KERNEL_NEW = re.compile(r"(\d+) \((\w+)\)")
_SDK_QUEUE_FULL = "Queue full"  # the SDK's own warning, when spans reach a full batch queue
_ROUTINE = ("attached;", "adopted", "resumed", "stopped;", "kernel side dropped", _SDK_QUEUE_FULL)


_AWAY = re.compile(r"longest away from the ring buffer: (\d+) ms")


def parse_away_ms(text: str) -> int | None:
    """otelproc's longest time between two reads of the ring buffer, from its last line."""
    found = _AWAY.search(text)
    return int(found.group(1)) if found else None


def parse_stop(returncode: int, text: str) -> StopReport:
    """otelproc's own account of a run, from its stderr."""
    logged: dict[str, int] = {}
    for line in text.splitlines():
        if "kernel side dropped" in line:
            pairs = [(k, int(v)) for k, v in _KERNEL_OLD.findall(line)] + [
                (k, int(v)) for v, k in _KERNEL_NEW.findall(line)
            ]
            for name, count in pairs:
                logged[name] = logged.get(name, 0) + count
    if _SDK_QUEUE_FULL in text:
        logged["queue_full"] = max(logged.get("queue_full", 0), 1)
    stopped = _STOPPED.search(text)
    dropped = {k: int(v) for k, v in _KEY_VALUE.findall(stopped.group(3) or "")} if stopped else {}
    for name, count in logged.items():  # the stop line's totals win; log lines fill in what it lacks
        dropped[name] = max(dropped.get(name, 0), count)
    return StopReport(
        returncode=returncode,
        events=int(stopped.group(1)) if stopped else None,
        spans=int(stopped.group(2)) if stopped else None,
        still_running=int(stopped.group(4)) if stopped else None,
        dropped=dropped,
        other_warnings=[line for line in text.splitlines() if not any(r in line for r in _ROUTINE)],
    )


class Otelproc:
    """`otelproc run` from this tree, exporting over OTLP/gRPC to `endpoint`; stopped with SIGTERM."""

    def __init__(
        self, match: str, endpoint: str, *extra: str, env: dict[str, str] | None = None, wrapper: Sequence[str] = ()
    ) -> None:
        """`wrapper` runs it inside something, e.g. unshare: then self.pid is the wrapper's."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELPROC_"))}
        full_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        # No state file and no pinned probe: each run starts from nothing, none resumes another's
        # processes, and a stopped run leaves no probe recording behind.
        full_env["OTELPROC_STATE_FILE"] = ""
        full_env["OTELPROC_PIN_DIR"] = ""
        full_env.update(env or {})
        self.args = ["run", "--match", match, "--adopt", "false", "--exporter", "otlp", *extra]
        self.launched = time.monotonic()
        self.launched_wall_ns = time.time_ns()  # to compare with the receiver's arrival times
        self.proc = subprocess.Popen(
            [*wrapper, PYTHON, "-m", "otelproc", *self.args],
            cwd=REPO,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        self.stderr = LineReader(self.proc.stderr)

    def wait_attached(self, timeout: float = 60) -> float:
        """Seconds from launch until otelproc said it attached."""
        return self.stderr.wait_for("attached", timeout, lambda: self.proc.poll() is None) - self.launched

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def stop(self, timeout: float = 120) -> StopReport:
        """SIGTERM (otelproc flushes what it holds), then reads what it said."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(30)
        self.stderr.join(10)
        return parse_stop(code, self.stderr.text())

    def kill(self) -> None:
        """For finally blocks: makes sure the child is gone, whatever happened."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


BPFTRACE_PROGRAM = (
    'tracepoint:sched:sched_process_exec /comm == "{name}"/ '
    '{{ printf("exec %d %s %s\\n", pid, comm, str(args->filename)); }} '
    'tracepoint:sched:sched_process_exit /comm == "{name}"/ '
    '{{ printf("exit %d %d\\n", pid, curtask->exit_code >> 8); }}'
)


class Bpftrace:
    """A bpftrace one-liner doing otelproc's exec/exit work: comm filter, one line per event.

    bpftrace reads tracepoint formats from tracefs; where tracefs is not mounted, it runs in a
    mount namespace of its own with tracefs mounted there, so the host's mounts stay untouched.
    `exec` keeps one pid from unshare to bpftrace, the pid we signal.
    """

    def __init__(self, name: str) -> None:
        program = BPFTRACE_PROGRAM.format(name=name)
        if Path("/sys/kernel/tracing/events/sched").is_dir():
            argv = ["bpftrace", "-e", program]
        else:
            argv = [
                "unshare",
                "--mount",
                "--",
                "sh",
                "-c",
                'mount -t tracefs nodev /sys/kernel/tracing && exec bpftrace -e "$0"',
                program,
            ]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines = 0
        self._said_attaching = False
        self._attached = threading.Event()
        self._reader = threading.Thread(target=self._count, daemon=True)
        self._reader.start()

    def _count(self) -> None:
        """Counts event lines ("exec ..." and "exit ..."), read in large chunks so that reading
        costs little; a line is counted by the newline before it and its "ex"."""
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()  # "Attaching 2 probes...", or nothing when it failed
        self._said_attaching = first.startswith(b"Attaching")
        self._attached.set()
        tail = b"\n" if first.endswith(b"\n") else b""
        while chunk := self.proc.stdout.read1(1 << 16):
            self.lines += (tail + chunk).count(b"\nex")
            tail = chunk[-2:]

    def wait_attached(self, timeout: float = 60) -> None:
        if not self._attached.wait(timeout) or not self._said_attaching:
            self.kill()
            error = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise RuntimeError(f"bpftrace did not attach: {error.strip()}")
        time.sleep(0.5)  # "Attaching" comes just before the probes are attached

    def stop(self) -> int:
        """SIGINT, as a person stops it; returns how many event lines it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        self._reader.join(10)
        return self.lines

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class JaegerService:
    """The Jaeger binary with one config (Jaeger itself, or the Collector), output to a log file."""

    def __init__(self, binary: str, config: Path, env: dict[str, str], log: Path, port: int) -> None:
        self.log = log
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [binary, "--config", f"file:{config}"], env={**base, **env}, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while not listening(port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{log.name}: not listening on {port}:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of values; they need not be sorted."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------- results


@dataclass
class Target:
    """One of the issue's targets and how this run did against it."""

    what: str
    goal: str  # as the issue states it, e.g. "<= 1.05x"; "report" where it asks for a number, not a bound
    measured: str
    met: bool | None  # None: a number to report, with nothing to meet

    @property
    def verdict(self) -> str:
        return "reported" if self.met is None else "met" if self.met else "**MISSED**"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def write_results(
    out: Path,
    name: str,
    title: str,
    machine_info: dict[str, Any],
    params: dict[str, Any],
    tables: list[Table],
    targets: list[Target],
    data: dict[str, Any],
) -> None:
    """<name>.json (everything) and <name>.md (the tables), and the tables on stdout."""
    md = [f"## {title}", "", f"Machine: {machine_line(machine_info)}", ""]
    md += ["Parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()), ""]
    for table in tables:
        md += [table.markdown(), ""]
    if targets:
        md += [
            Table(
                "Targets",
                ["what", "target", "measured", "verdict"],
                [[t.what, t.goal, t.measured, t.verdict] for t in targets],
            ).markdown(),
            "",
        ]
    text = "\n".join(md)
    (out / f"{name}.md").write_text(text)
    machine_info = dict(machine_info, loadavg_at_end=_read("/proc/loadavg").split()[:3])
    record = {
        "benchmark": name,
        "title": title,
        "machine": machine_info,
        "params": params,
        "targets": [dict(asdict(t), verdict=t.verdict) for t in targets],
        "tables": [asdict(t) for t in tables],
        "data": data,
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(text)
    print(f"(written: {out / (name + '.json')}, {out / (name + '.md')})")


def pyplot() -> Any:
    """matplotlib's pyplot without a display, or None (and a note) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -r bench/requirements.txt): no plot")
        return None
    return plt


def save_plot(fig: Any, path: Path) -> None:
    """Writes a finished figure as PNG and frees it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"(plot: {path})")
