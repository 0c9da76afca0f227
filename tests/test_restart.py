"""A restart of otelproc loses nothing: the pinned probe records while otelproc is down, and the state
file carries what otelproc knew across the restart (without a pinned probe, it alone). The state file is
written 0600, with no secret in it, and a state file that cannot be written costs only itself.

Real kernel, real `otelproc run` subprocesses, the real OTLP receiver. Every
sidecar pins in a bpffs of the test session's own (support.sidecar.PinRoot), and its
probe is removed at teardown.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from otelproc.kernel import libbpf, pins
from support import PYTHON, REPO
from support.identity import HOST_PIDNS, expected_ids
from support.subjects import LONE_COMM, MATCH_TEST, TEST_COMM, ended_at, proc_start_ticks, spawn, waiting

QUIET = {"OTEL_METRICS_EXPORTER": "none", "OTEL_BSP_SCHEDULE_DELAY": "200"}


def proc_ticks(span) -> int:
    """The start ticks in a span's otelproc.process.key (boot/pidns/vpid/ticks)."""
    return int(span.attributes["otelproc.process.key"].split("/")[3])


def lifetime_span_id(key: str) -> str:
    """The lifetime span id of a process that had a 'started' span (docs/spans.md), written out independently."""
    return hashlib.sha256(b"otelproc lifetime " + key.encode()).digest()[:8].hex()


class Storm:
    """Short-lived subjects, one after another, each exiting with status 6, until stopped."""

    def __init__(self, test_python: str) -> None:
        self.test_python = test_python
        self.exits: dict[int, int] = {}  # pid -> when it was reaped, Unix ns
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            child = spawn(self.test_python, "import sys; sys.exit(6)")
            child.wait(30)
            self.exits[child.pid] = time.time_ns()
            time.sleep(0.02)

    def stop(self) -> dict[int, int]:
        self._stop.set()
        self._thread.join(60)
        return self.exits


# The names an older otelproc gave the probe's maps and programs, not all beginning with otelproc: the
# upgrade test's old version (old_otelproc) uses them.
NAMES_BEFORE = {
    "otelproc_exec": "handle_exec",
    "otelproc_fork": "handle_fork",
    "otelproc_exit": "handle_exit",
    "otelproc_signal": "handle_signal",
    "otelproc_oom": "handle_oom_victim",
    "otelproc_match": "match_exe_names",
    "otelproc_track": "tracked",
    "otelproc_ring": "events",
    "otelproc_lost": "lost",
    "otelproc_heap": "scratch",
    "otelproc_scope": "scope_cgroups",
}


@pytest.fixture(scope="module")
def old_otelproc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This otelproc, but with a BPF object whose struct event has one more field (every offset after
    it moves) and whose maps and programs have the names of before (NAMES_BEFORE): the "old version"
    an upgrade replaces. Returns the tree to run it from."""
    root = tmp_path_factory.mktemp("old")
    bpf = root / "bpf"
    shutil.copytree(REPO / "bpf", bpf)
    shutil.copytree(REPO / "otelproc", root / "otelproc", ignore=shutil.ignore_patterns("__pycache__"))
    header = bpf / "otelproc.h"
    header.write_text(header.read_text().replace("\t__u32 kind;", "\t__u64 old_field;\n\t__u32 kind;", 1))
    source = bpf / "otelproc.bpf.c"
    for name, before in NAMES_BEFORE.items():
        source.write_text(re.sub(rf"\b{name}\b", before, source.read_text()))
        for module in (root / "otelproc").rglob("*.py"):
            module.write_text(module.read_text().replace(f'"{name}"', f'"{before}"'))
    built = root / "otelproc.bpf.o"
    subprocess.run(["make", "-s", "-C", str(bpf), f"OUT={built}"], check=True)
    shutil.copy(built, root / "otelproc" / "bpf" / "otelproc.bpf.o")
    return root


def stop_first(side, how: str) -> None:
    if how == "kill":
        side.kill()
    else:
        assert side.stop() == 0


@pytest.mark.parametrize(
    "how,version", [("kill", "same"), ("sigterm", "same"), ("sigterm", "upgrade"), ("kill", "upgrade")]
)
def test_restart_loses_nothing_and_duplicates_nothing(
    how, version, sidecar, grpc_receiver, test_python, pin_root, tmp_path, request
):
    pin_dir = pin_root.new_dir()
    args = (
        "--match",
        TEST_COMM,
        "--state-file",
        str(tmp_path / "state.json"),
        "--pin-dir",
        pin_dir,
        "--sweep-interval",
        "0.5",
        "--start-span-delay",
        "0.2",
    )
    first_tree = request.getfixturevalue("old_otelproc") if version == "upgrade" else REPO
    first = sidecar(*args, endpoint=grpc_receiver.endpoint, env=QUIET, cwd=first_tree)
    if version == "upgrade":  # pinned under the names of before: the takeover must find its maps all the same
        (old_dir,) = pins.probes(Path(pin_dir))
        assert (old_dir / "map_events").exists() and (old_dir / "link_handle_exec").exists()
    a, b = waiting(test_python, 3), waiting(test_python, 4)
    grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(a.pid, "started") and grpc_receiver.of_pid(b.pid, "started"))
    # A clean stop reads everything first, so the storm may run through it; a kill -9 loses
    # what the killed otelproc held in memory, so the storm begins after it.
    storm = Storm(test_python) if how == "sigterm" else None
    time.sleep(1.5)  # the state file is at most a second behind
    stop_first(first, how)
    storm = storm or Storm(test_python)
    b_end = ended_at(b)  # started before, ended in the gap
    gap = spawn(test_python, "import sys; sys.exit(6)")  # started and ended in the gap
    assert gap.wait(30) == 6
    gap_end = time.time_ns()
    c = waiting(test_python, 5)  # started in the gap, ends after it
    time.sleep(0.3)
    second = sidecar(*args, endpoint=grpc_receiver.endpoint, env=QUIET)
    if version == "upgrade":
        assert any("took over the probe pinned in" in line for line in second.lines), second.lines
    else:
        assert any("resumed the probe pinned in" in line for line in second.lines), second.lines
    time.sleep(1)
    storm_exits = storm.stop()
    a_end, c_end = ended_at(a), ended_at(c)
    everyone = [a.pid, b.pid, c.pid, gap.pid, *storm_exits]
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p) for p in everyone), timeout=30)
    time.sleep(1.5)  # a duplicate, if one were sent, would be here by now
    assert second.stop() == 0

    ends = {
        a.pid: (a_end, 3),
        b.pid: (b_end, 4),
        c.pid: (c_end, 5),
        gap.pid: (gap_end, 6),
        **{pid: (t, 6) for pid, t in storm_exits.items()},
    }
    for pid, (end, status) in ends.items():
        spans = grpc_receiver.of_pid(pid)
        assert len(spans) == 1, f"pid {pid}: {len(spans)} lifetime spans"
        (span,) = spans
        assert span.attributes["process.exit.code"] == status, pid
        assert "otelproc.end.approximate" not in span.attributes, pid
        assert abs(span.end_ns - end) < 500_000_000, f"pid {pid}: its real exit time"
        assert len(grpc_receiver.of_pid(pid, "started")) <= 1, f"pid {pid}: one 'started' span at most"
    sent = [(s.trace_id, s.span_id) for s in grpc_receiver.spans]
    assert len(sent) == len(set(sent)), "no span id sent twice"
    # The process that outlived the gap: its process span (the 'started' span the first otelproc sent)
    # keeps its id, and the second otelproc hangs the lifetime span from it, under the lifetime id.
    (a_started,) = grpc_receiver.of_pid(a.pid, "started")
    (a_span,) = grpc_receiver.of_pid(a.pid)
    trace_id, process_span_id = expected_ids(HOST_PIDNS, a.pid, proc_ticks(a_span))
    assert (a_started.trace_id, a_started.span_id) == (trace_id, process_span_id), "the same process span id"
    assert (a_span.trace_id, a_span.parent_span_id) == (trace_id, process_span_id), "its lifetime under it"
    assert a_span.span_id == lifetime_span_id(a_span.attributes["otelproc.process.key"])
    assert a_span.attributes["otelproc.start.source"] == "exec"  # carried over, not adopted anew
    (gap_span,) = grpc_receiver.of_pid(gap.pid)
    assert gap_span.attributes["otelproc.start.source"] == "exec", "its exec was read from the pinned ring"
    left = pins.probes(Path(pin_dir))
    assert len(left) == 1, f"one probe pinned after the restart, not {left}"


def test_a_second_instance_is_refused(sidecar, grpc_receiver):
    first = sidecar("--match", TEST_COMM, endpoint=grpc_receiver.endpoint, env=QUIET)
    result = subprocess.run(
        [PYTHON, "-m", "otelproc", "run", "--match", TEST_COMM, "--duration", "5"],
        cwd=REPO,
        env=first.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"another otelproc (pid {first.proc.pid}) owns the pinned probe" in lines[0], lines
    assert first.proc.poll() is None
    assert len(pins.probes(Path(first.env["OTELPROC_PIN_DIR"]))) == 1


def test_state_file_of_another_boot_is_not_resumed(sidecar, grpc_receiver, test_python, tmp_path):
    path = tmp_path / "state.json"
    first = sidecar(
        "--match",
        TEST_COMM,
        "--adopt",
        "false",
        "--state-file",
        str(path),
        "--start-span-delay",
        "3600",
        endpoint=grpc_receiver.endpoint,
        env=QUIET,
    )
    child = waiting(test_python, 0)
    try:
        time.sleep(1.5)
        assert first.stop() == 0
    finally:
        child.communicate(b"")
    saved = json.loads(path.read_text())
    assert child.pid in [p["pid"] for p in saved["processes"]]
    saved["boot_id"] = "00000000-0000-0000-0000-000000000000"
    path.write_text(json.dumps(saved))
    # A fresh pin directory: the first probe would hold the child's exit, and this is about the file.
    second = sidecar(
        "--match", TEST_COMM, "--adopt", "false", "--state-file", str(path), endpoint=grpc_receiver.endpoint, env=QUIET
    )
    (line,) = [line for line in second.lines if "state file" in line]
    assert "from another boot" in line and "not resumed" in line
    time.sleep(1)
    assert second.stop() == 0
    assert grpc_receiver.of_pid(child.pid) == [], "nothing exported for a process of another boot"


def test_detach_leaves_no_program_and_no_pin(sidecar, grpc_receiver, tmp_path):
    side = sidecar("--match", TEST_COMM, endpoint=grpc_receiver.endpoint, env=QUIET)
    pin_dir, state_file = Path(side.env["OTELPROC_PIN_DIR"]), Path(side.env["OTELPROC_STATE_FILE"])
    assert side.stop() == 0
    assert any("stays pinned" in line for line in side.lines)
    (probe_dir,) = pins.probes(pin_dir)
    prog_ids = pins.prog_ids(probe_dir)
    assert prog_ids and all(libbpf.prog_exists(i) for i in prog_ids), "SIGTERM leaves the probe attached"
    shown = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True, check=True).stdout
    assert all(f"{i}: " in shown for i in prog_ids)

    result = subprocess.run(
        [PYTHON, "-m", "otelproc", "detach"], cwd=REPO, env=side.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "detached: removed the probe pinned in" in result.stderr
    assert not pin_dir.exists() and not state_file.exists()
    assert not any(libbpf.prog_exists(i) for i in prog_ids)
    shown = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True, check=True).stdout
    assert not any(line.startswith(f"{i}: ") for line in shown.splitlines() for i in prog_ids)
    again = subprocess.run(
        [PYTHON, "-m", "otelproc", "detach"], cwd=REPO, env=side.env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0 and "nothing pinned" in again.stderr


def test_without_bpffs_the_state_file_bounds_what_ended_unseen(sidecar, grpc_receiver, test_python, tmp_path):
    path, not_bpffs = tmp_path / "state.json", tmp_path / "pins"
    args = ("--match", TEST_COMM, "--state-file", str(path), "--pin-dir", str(not_bpffs), "--start-span-delay", "0.2")
    first = sidecar(*args, endpoint=grpc_receiver.endpoint, env=QUIET)
    (warning,) = [line for line in first.lines if "not pinning" in line]
    assert f"{not_bpffs} is not on a bpffs mount" in warning
    a = waiting(test_python, 0)
    grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(a.pid, "started"))
    time.sleep(1.5)  # the state file caught up; from now on only its mtime moves
    last_alive = time.time_ns()
    time.sleep(1.2)
    first.kill()
    killed = time.time_ns()
    a_end = ended_at(a)
    second = sidecar(*args, endpoint=grpc_receiver.endpoint, env=QUIET)
    started = time.time_ns()
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(a.pid))
    assert span.attributes["otelproc.end.approximate"] is True
    # Its end is the last time otelproc knew it alive: no later than the real one.
    assert last_alive <= span.end_ns <= killed and span.end_ns <= a_end
    after, before = span.attributes["otelproc.end.after"], span.attributes["otelproc.end.before"]
    assert after < before
    assert span.parent_span_id == grpc_receiver.of_pid(a.pid, "started")[0].span_id  # under its 'started' span
    assert started >= span.end_ns
    assert second.stop() == 0


FLAT_OBJECT = REPO / "tests" / "data" / "flat-event.bpf.o"  # struct event without parts (tests/data/README.md)


@pytest.mark.parametrize("old_object", ["shipped", "flat record"])
def test_takeover_takes_what_both_probes_saw_once(old_object, pin_root, tmp_path):
    """In process, with the real probes: the old probe alone records X; then both run and record Y.
    The sidecar reads the old ring (X, Y) and skips the new ring's Y. The old probe is this otelproc's
    object under other settings, or one whose struct event has no parts: its ring is read in its own layout."""
    from otelproc import cli, config
    from otelproc.kernel.probe import Probe, ProbeConfig
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from otelproc.sidecar.loop import build_sidecar

    shell = tmp_path / "otpoverlap"
    shutil.copy("/bin/sh", shell)
    pin_dir = pin_root.new_dir()
    args = [
        "run",
        "--match",
        "otpoverlap",
        "--exporter",
        "console",
        "--state-file",
        "",
        "--pin-dir",
        pin_dir,
        "--usage",
        "cpu,memory,faults",
    ]
    settings = config.resolve("run", cli.build_parser().parse_args(args))
    new = ProbeConfig.from_settings(settings, Path(pin_dir))
    old = replace(new, max_tracked=1024) if old_object == "shipped" else replace(new, object_path=FLAT_OBJECT)
    try:
        Probe(old, lambda raw: None).close()  # pinned, nobody reads it
        x = subprocess.run([shell, "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exit 6"]).returncode
        spans = InMemorySpanExporter()
        sidecar = build_sidecar(settings, SimpleSpanProcessor(spans))
        with Probe(new, sidecar.on_record) as probe:
            sidecar.layout = probe.layout
            assert probe.previous is not None, "another fingerprint: a takeover"
            assert (probe.previous.layout.offsets == probe.layout.offsets) == (old_object == "shipped")
            y = subprocess.Popen([shell, "-c", "exit 7"])
            assert (x, y.wait()) == (6, 7)
            sidecar.carryover.take_over(probe, sidecar.on_record)
            probe.poll(0)
        mine = {
            s.attributes["process.exit.code"]: s.attributes
            for s in spans.get_finished_spans()
            if s.attributes.get("process.executable.name") == "otpoverlap"
        }
        assert sorted(mine) == [6, 7], "each exit once, the overlap's from the old ring"
        used = mine[6]  # X's exit, read from the old ring in the old layout
        assert used["process.cpu.time.user"] + used["process.cpu.time.system"] > 0.001, used
        assert used["process.paging.faults.minor"] > 0 and used["process.pid"] > 0, used
        assert [p.name for p in pins.probes(Path(pin_dir))] == [probe.pinned_at.name], "the old probe's pins are gone"
    finally:
        pin_root.remove(pin_dir)


def test_a_resumed_probe_matches_what_this_otelproc_was_told(pin_root, tmp_path):
    """The match list is a map, not part of the fingerprint: a restart with another --match resumes
    the probe and rewrites the list."""
    from otelproc.clock import BootClock
    from otelproc.kernel.decoder import decode
    from otelproc.kernel.probe import Probe, ProbeConfig
    from otelproc.matching import MatchRule

    old_name, new_name = tmp_path / "otpmatchold", tmp_path / "otpmatchnew"
    for program in (old_name, new_name):
        shutil.copy("/bin/true", program)
    pin_dir = Path(pin_root.new_dir())
    try:
        Probe(ProbeConfig(match=(MatchRule("otpmatchold"),), pin_dir=pin_dir), lambda raw: None).close()
        events = []
        with Probe(ProbeConfig(match=(MatchRule("otpmatchnew"),), pin_dir=pin_dir), events.append) as probe:
            assert probe.resumed
            probe.poll(0)
            events.clear()  # what the old list matched before: not this test's business
            for program in (old_name, new_name):
                assert subprocess.run([program]).returncode == 0
            probe.poll(0)
            seen = {decode(raw, BootClock(), probe.layout).comm for raw in events}
        assert seen == {"otpmatchnew"}
    finally:
        pin_root.remove(pin_dir)


def test_kill9_and_restart_lose_nothing_duplicate_nothing(sidecar, grpc_receiver, test_python, tmp_path):
    # No pinning: what the state file alone carries across (test_restart.py has the pinned probe).
    args = (
        "--match",
        TEST_COMM,
        "--state-file",
        str(tmp_path / "state.json"),
        "--pin-dir",
        "",
        "--sweep-interval",
        "0.3",
        "--start-span-delay",
        "0.2",
    )
    first = sidecar(*args, endpoint=grpc_receiver.endpoint, env=QUIET)
    waiting = "import sys; sys.stdin.read()"
    a = spawn(test_python, waiting, "a", stdin=subprocess.PIPE)
    b = spawn(test_python, waiting, "b", stdin=subprocess.PIPE)
    grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(a.pid, "started") and grpc_receiver.of_pid(b.pid, "started"))
    time.sleep(1)  # a sweep has written the state file
    first.kill()
    b.communicate(b"")  # b exits while no otelproc runs
    c = spawn(test_python, waiting, "c", stdin=subprocess.PIPE)  # c starts while no otelproc runs
    time.sleep(0.3)
    second = sidecar(*args, endpoint=grpc_receiver.endpoint, env=QUIET)
    assert any("resumed" in line for line in second.lines)
    grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(c.pid, "started"))
    time.sleep(0.5)  # a second 'started' span for a, if one were sent, would be here by now
    a.communicate(b"")
    c.communicate(b"")
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p.pid) for p in (a, b, c)), timeout=30)
    time.sleep(1.5)
    assert second.stop() == 0
    for p in (a, b, c):
        (lifetime,) = grpc_receiver.of_pid(p.pid)
        assert len(grpc_receiver.of_pid(p.pid, "started")) == 1, f"one 'started' span for {p.args}"
        (started,) = grpc_receiver.of_pid(p.pid, "started")  # the process span, with the scheme's id
        assert (
            started.span_id
            == expected_ids(HOST_PIDNS, p.pid, int(lifetime.attributes["otelproc.process.key"].split("/")[3]))[1]
        )
        assert lifetime.parent_span_id == started.span_id
    (a_span,) = grpc_receiver.of_pid(a.pid)
    assert a_span.attributes["otelproc.start.source"] == "exec"  # carried over from the state file
    assert a_span.attributes["process.exit.code"] == 0
    (b_span,) = grpc_receiver.of_pid(b.pid)
    assert b_span.attributes["otelproc.end.approximate"] is True
    assert b_span.attributes["otelproc.end.after"] < b_span.attributes["otelproc.end.before"]
    (c_span,) = grpc_receiver.of_pid(c.pid)
    assert c_span.attributes["otelproc.start.source"] == "adopted"


def test_sigterm_records_state_0600(sidecar, grpc_receiver, test_python, tmp_path):
    path = tmp_path / "state.json"
    side = sidecar(*MATCH_TEST, "--state-file", str(path), endpoint=grpc_receiver.endpoint, env=QUIET)
    child = spawn(test_python, "import sys; sys.stdin.read()", "--password=hunter2", stdin=subprocess.PIPE)
    try:
        time.sleep(1)  # the exec has been read
        assert side.stop() == 0
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        saved = json.loads(path.read_text())
        (record,) = [p for p in saved["processes"] if p["pid"] == child.pid]
        assert record["start_ticks"] == proc_start_ticks(child.pid)
        assert "hunter2" not in path.read_text() and "--password=***" in record["argv"]
    finally:
        child.communicate(b"")


def test_a_state_file_that_cannot_be_written_is_counted_and_the_loop_goes_on(
    sidecar, grpc_receiver, lone_python, tmp_path
):
    """A stage that fails (here: the state file) is counted by stage, logged at most every
    few seconds, and the sidecar goes on making spans."""
    path = tmp_path / "state.json"
    side = sidecar(
        "--match",
        LONE_COMM,
        "--adopt",
        "false",
        "--state-file",
        str(path),
        "--sweep-interval",
        "0.2",
        endpoint=grpc_receiver.endpoint,
        env={"OTEL_METRIC_EXPORT_INTERVAL": "1000"},
    )
    (tmp_path / "state.json.tmp").mkdir()  # where each save writes first: every save fails now
    child = subprocess.Popen([lone_python, "-c", "pass"], env={"PATH": "/usr/bin"})  # a change to write
    assert child.wait(30) == 0
    grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    # The state file is written (here: tried) every second while it is behind the table.
    points = grpc_receiver.wait_for(
        lambda _: (
            (m := grpc_receiver.metric_points()).get(("otelproc.failures", (("stage", "state_file"),)), 0) >= 3 and m
        )
    )
    assert points[("otelproc.failures", (("stage", "state_file"),))] >= 3
    assert side.proc.poll() is None
    assert side.stop() == 0
    logged = [line for line in side.lines if "state_file failed" in line]
    assert 1 <= len(logged) <= 2, logged  # not one per sweep
    assert "failed: state_file=" in side.wait_line("stopped;")
