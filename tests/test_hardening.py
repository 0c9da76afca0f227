"""Issue 13: no input from a traced process (or a busy host) stops otelproc, drops spans, or leaks a secret.

Each test drives a real `otelproc run` (or `otelproc events`) against the real kernel and a real
OTLP receiver, with subjects started from pytest (which is not tracked: the sidecars here match
a name of their own, given to a copy of the interpreter).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import PYTHON, REPO
from support.identity import HOST_PIDNS, expected_ids
from support.subjects import TEST_COMM, proc_start_ticks, python_named

QUIET = {"OTEL_METRICS_EXPORTER": "none"}
# Names no other test (nor another helper's) runs under: a tiny map or ring must hold only ours.
COMM = "python-i13-hard"  # named like python: spans are named after the script it runs
PR_SET_NAME = 15


@pytest.fixture(scope="module")
def hard_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    return python_named(tmp_path_factory.mktemp("venv"), COMM)


def waiting(python: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A subject that runs until its stdin is closed."""
    return subprocess.Popen([python, "-c", "import sys; sys.stdin.read()", *args], stdin=subprocess.PIPE,
                            env=env if env is not None else {"PATH": "/usr/bin:/bin"})


def finish(*children: subprocess.Popen) -> None:
    for child in children:
        if child.poll() is None:
            child.stdin.close()
    for child in children:
        child.wait(30)


def test_adopts_a_process_whose_comm_is_not_utf8(sidecar, grpc_receiver, hard_python):
    """Item 1: a comm cut inside a multi-byte character (prctl PR_SET_NAME) used to crash adoption."""
    renamed = subprocess.Popen(
        [hard_python, "-c", f"import ctypes, sys; ctypes.CDLL(None).prctl({PR_SET_NAME}, b'py-caf\\xc3', 0, 0, 0); "
                            "print('renamed', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={"PATH": "/usr/bin"},
    )
    try:
        assert renamed.stdout.readline() == b"renamed\n"
        assert Path(f"/proc/{renamed.pid}/comm").read_bytes() == b"py-caf\xc3\n"
        side = sidecar("--match", COMM, endpoint=grpc_receiver.endpoint, env=QUIET)  # adopts at start
        assert any("adopted" in line for line in side.lines)
    finally:
        finish(renamed)
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(renamed.pid))
    assert span.attributes["otelproc.comm"] == "py-caf\\xc3"  # as a kernel record's bytes decode
    assert span.attributes["otelproc.start.source"] == "adopted"
    assert side.proc.poll() is None


def test_a_non_utf8_argv_does_not_take_its_batch_down(sidecar, grpc_receiver, hard_python, tmp_path):
    """Item 2: an adopted python runs a script whose name is not UTF-8 (the span is named after it),
    and ends within one batch of five others: all six spans arrive."""
    link = tmp_path / COMM
    link.symlink_to(hard_python)
    script = os.fsencode(tmp_path) + b"/job-\xfe.py"
    Path(os.fsdecode(script)).write_text("import sys; sys.stdin.read()")
    odd = subprocess.Popen([bytes(link), script, b"arg-\xfe"], stdin=subprocess.PIPE, env={"PATH": "/usr/bin"})
    try:
        time.sleep(0.3)
        side = sidecar("--match", COMM, "--start-span-delay", "3600", endpoint=grpc_receiver.endpoint,
                       env={**QUIET, "OTEL_BSP_SCHEDULE_DELAY": "3000"})
        others = [waiting(str(link), f"other-{i}") for i in range(5)]
        time.sleep(0.5)
    finally:
        finish(odd)
    finish(*others)  # all six end within one batch's schedule delay
    pids = [odd.pid] + [o.pid for o in others]
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p) for p in pids), timeout=30)
    (odd_span,) = grpc_receiver.of_pid(odd.pid)
    assert odd_span.name == "job-\\xfe.py" and odd_span.attributes["otelproc.start.source"] == "adopted"
    assert odd_span.attributes["process.command_args"][-1] == "arg-\\xfe"
    assert side.stop() == 0
    assert "export_failed" not in side.wait_line("stopped;")


FORKER = """
import os, sys
sys.stdin.readline()
r, w = os.pipe()
children = []
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # until the parent closes its end
        os._exit(0)
    children.append(pid)
print(" ".join(map(str, children)), flush=True)
sys.stdin.readline()
os.close(w)
for pid in children:
    os.waitpid(pid, 0)
"""


def test_forks_lost_in_a_full_ring_buffer_are_still_tracked(sidecar, grpc_receiver, hard_python):
    """Item 3: the fork handler tracks the child before it reserves ring space for the record."""
    side = sidecar("--match", COMM, "--adopt", "false", "--ring-buffer-size", "4096", "--sweep-interval", "0.3",
                   "--start-span-delay", "3600", endpoint=grpc_receiver.endpoint, env=QUIET)
    parent = subprocess.Popen([hard_python, "-c", FORKER, "60"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={"PATH": "/usr/bin"})
    try:
        time.sleep(1)  # the parent's exec record has been read: the ring is empty
        os.kill(side.proc.pid, signal.SIGSTOP)  # nothing reads the ring now: 60 fork records overflow it
        try:
            parent.stdin.write("fork\n")
            parent.stdin.flush()
            children = [int(p) for p in parent.stdout.readline().split()]
        finally:
            os.kill(side.proc.pid, signal.SIGCONT)
        time.sleep(2)  # sweeps adopt what the kernel tracks and the table does not know
        parent.stdin.write("end\n")
        parent.stdin.flush()
        assert parent.wait(30) == 0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p) for p in children), timeout=30)
    time.sleep(1)
    assert all(len(grpc_receiver.of_pid(p)) == 1 for p in children), "one span each, none twice"
    assert side.stop() == 0
    line = side.wait_line("stopped;")
    assert "ringbuf_full" in line, "the ring did overflow: the test tested something"


def test_a_process_refused_by_a_full_map_is_tracked_once_there_is_room(sidecar, grpc_receiver, hard_python):
    """Item 4: with --max-processes 3, a fourth process is refused, then tracked when one of the three
    ends: its own exit is reported by the kernel (not guessed by a sweep), and so is its child's."""
    side = sidecar("--match", COMM, "--adopt", "false", "--max-processes", "3", "--sweep-interval", "0.3",
                   "--start-span-delay", "3600", endpoint=grpc_receiver.endpoint, env=QUIET)
    first = [waiting(hard_python, f"fill-{i}") for i in range(3)]
    time.sleep(0.5)
    fourth = subprocess.Popen(
        [hard_python, "-c", "import os, sys; sys.stdin.readline(); pid = os.fork()\n"
                            "if pid == 0: os._exit(0)\n"
                            "print(pid, flush=True); os.waitpid(pid, 0); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={"PATH": "/usr/bin"},
    )
    try:
        side.wait_line("tracked_map_full")  # refused: the map holds the first three
        finish(first[0])  # room for one
        time.sleep(2)  # sweeps see the refusal, then the room
        fourth.stdin.write("fork\n")
        fourth.stdin.flush()
        child = int(fourth.stdout.readline())
        fourth.stdin.write("end\n")
        fourth.stdin.flush()
        assert fourth.wait(30) == 0
    finally:
        finish(*first)
        if fourth.poll() is None:
            fourth.kill()
            fourth.wait()
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(fourth.pid), timeout=30)
    assert span.attributes.get("process.exit.code") == 0 and "otelproc.end.approximate" not in span.attributes
    (child_span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child), timeout=30)
    assert child_span.parent_span_id == span.span_id
    assert side.stop() == 0


def test_events_redacts_argv(hard_python):
    """Item 5: `otelproc events` honours --redact like `run`."""
    events = subprocess.Popen([PYTHON, "-m", "otelproc", "events", "--match", COMM], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "attached" in events.stderr.readline()
        child = subprocess.run([hard_python, "-c", "pass", "--password=hunter2", "-H", "Authorization: Bearer t0k3n"],
                               timeout=30, env={"PATH": "/usr/bin"})
        assert child.returncode == 0
        time.sleep(0.5)
    finally:
        events.terminate()
        out, _ = events.communicate(timeout=30)
    assert "hunter2" not in out and "t0k3n" not in out
    assert '"--password=***"' in out and '"Authorization: Bearer ***"' in out


@pytest.mark.parametrize("scope", ["host", "cgroup=/sys/fs/cgroup"])
def test_host_and_cgroup_scope_are_refused_inside_a_pid_namespace(scope):
    """Item 8: the kernel would number processes as the host does, /proc as the namespace does."""
    result = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", PYTHON, "-m", "otelproc", "run", "--scope", scope,
         "--duration", "1", "--exporter", "console"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--scope {scope}" in lines[0] and "pidns" in lines[0], lines


def test_a_state_file_that_cannot_be_written_is_counted_and_the_loop_goes_on(sidecar, grpc_receiver, hard_python,
                                                                               tmp_path):
    """Item 9: a stage that fails (here: the state file) is counted by stage, logged at most every
    few seconds, and the sidecar goes on making spans."""
    path = tmp_path / "state.json"
    side = sidecar("--match", COMM, "--adopt", "false", "--state-file", str(path), "--sweep-interval", "0.2",
                   endpoint=grpc_receiver.endpoint, env={"OTEL_METRIC_EXPORT_INTERVAL": "1000"})
    (tmp_path / "state.json.tmp").mkdir()  # where each save writes first: every save fails now
    child = subprocess.Popen([hard_python, "-c", "pass"], env={"PATH": "/usr/bin"})  # a change to write
    assert child.wait(30) == 0
    grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    # The state file is written (here: tried) every second while it is behind the table.
    points = grpc_receiver.wait_for(
        lambda _: (m := grpc_receiver.metric_points()).get(("otelproc.failures", (("stage", "state_file"),)), 0) >= 3
        and m)
    assert points[("otelproc.failures", (("stage", "state_file"),))] >= 3
    assert side.proc.poll() is None
    assert side.stop() == 0
    logged = [line for line in side.lines if "state_file failed" in line]
    assert 1 <= len(logged) <= 2, logged  # not one per sweep
    assert "failed: state_file=" in side.wait_line("stopped;")


def test_span_limits_from_the_environment_apply(sidecar, grpc_receiver, hard_python):
    """Item 11: OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT and OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, as the SDK applies them."""
    sidecar("--match", COMM, "--adopt", "false", endpoint=grpc_receiver.endpoint,
            env={**QUIET, "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "12", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "20"})
    child = waiting(hard_python, "x" * 100)
    ticks = proc_start_ticks(child.pid)
    finish(child)
    _trace, span_id = expected_ids(HOST_PIDNS, child.pid, ticks)
    (span,) = grpc_receiver.wait_for(lambda spans: [s for s in spans if s.span_id == span_id])
    (wire,) = [s for r in grpc_receiver.requests for rs in r.resource_spans for ss in rs.scope_spans
               for s in ss.spans if s.span_id.hex() == span_id]
    assert len(span.attributes) == 12 and wire.dropped_attributes_count > 0
    assert all(len(v) <= 20 for v in span.attributes.values() if isinstance(v, str))
    assert span.attributes["process.command_args"][-1] == "x" * 20


PASSWD = "containerroot:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"


def test_owner_is_the_name_in_the_process_own_passwd(sidecar, grpc_receiver, hard_python, tmp_path):
    """Item 11: a process in a mount namespace of its own with its own /etc/passwd (as in a container)."""
    passwd = tmp_path / "passwd"
    passwd.write_text(PASSWD)
    side = sidecar("--match", COMM, "--adopt", "false", endpoint=grpc_receiver.endpoint, env=QUIET)
    inside = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'mount --bind {passwd} /etc/passwd && exec {hard_python} -c "import os, sys; print(os.getpid(), flush=True); '
         'sys.stdin.read()"'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        pid = int(inside.stdout.readline())
        time.sleep(0.5)  # its exec record is read while it runs
    finally:
        finish(inside)
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(pid))
    assert span.attributes["process.owner"] == "containerroot" and span.attributes["process.user.id"] == 0
    assert side.stop() == 0


def test_a_process_that_cannot_be_adopted_is_counted_and_the_rest_adopted(test_python, monkeypatch):
    """Adoption at start: one process whose 'adopt' event raises (no /proc entry does so today; the
    tracker is made to, for one pid) is counted under stage 'adopt' and skipped; the others are
    adopted, and otelproc starts."""
    from otelproc import cli, config
    from otelproc.kernel.probe import Probe, ProbeConfig
    from otelproc.sidecar.loop import Sidecar

    args = ["run", "--match", TEST_COMM, "--exporter", "console", "--state-file", "", "--pin-dir", ""]
    sidecar = Sidecar(config.resolve("run", cli.build_parser().parse_args(args), environ={}))
    children = [waiting(test_python, f"adoptee-{i}") for i in range(3)]
    try:
        time.sleep(0.3)  # each has exec'd: /proc names it TEST_COMM
        bad = children[1].pid
        handle = sidecar.tracker.handle

        def fails_for_one(event):
            if event.pid == bad:
                raise ValueError("an entry the tracker cannot take")
            return handle(event)

        monkeypatch.setattr(sidecar.tracker, "handle", fails_for_one)
        with Probe(ProbeConfig.from_settings(sidecar.settings, None), sidecar.on_record) as probe:
            assert sidecar.adopt(probe) == 2
    finally:
        finish(*children)
        sidecar.processor.shutdown()
    assert {pid for pid, _ticks in sidecar.tracker.processes} == {children[0].pid, children[2].pid}
    assert sidecar.stats.failures == {"adopt": 1}


def test_a_process_the_sweep_cannot_adopt_costs_only_itself(test_python, monkeypatch):
    """A sweep's findings are applied one process at a time: one whose 'adopt' event raises is
    counted under stage 'adopt' and skipped; the processes found after it are still adopted."""
    import collections

    from otelproc.clock import BootClock
    from otelproc.otel.telemetry import Stats
    from otelproc.sidecar import adoption
    from otelproc.sidecar.reconcile import Findings, Reconciler
    from otelproc.sidecar.tracker import Tracker

    children = [waiting(test_python, f"found-{i}") for i in range(3)]
    try:
        time.sleep(0.3)
        findings = Findings(found=collections.deque(adoption.snapshot(c.pid, BootClock(), None) for c in children))
        tracker, stats, failed = Tracker(16, 10**18), Stats(), []
        bad = children[1].pid
        handle = tracker.handle

        def fails_for_one(event):
            if event.pid == bad:
                raise ValueError("an entry the tracker cannot take")
            return handle(event)

        monkeypatch.setattr(tracker, "handle", fails_for_one)
        reconciler = Reconciler(tracker, None, stats, lambda pid: None, lambda skip: (),
                                lambda stage, exc: failed.append(stage))
        assert reconciler.apply(findings, time.monotonic_ns() + 10_000_000_000) == []
    finally:
        finish(*children)
    assert {pid for pid, _ticks in tracker.processes} == {children[0].pid, children[2].pid}
    assert failed == ["adopt"] and stats.reconciled["exec_missed"] == 2 and not findings.found
