"""Adoption: the processes already running when `otelproc run` starts, and those a /proc sweep finds,
get their spans however odd their names are; one that cannot be adopted costs only itself.

Real `otelproc run` (or the sidecar in process, with the real probe) against the real kernel and a real
OTLP receiver, with subjects started from pytest, which no sidecar here tracks.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from support.cli import QUIET
from support.subjects import LONE_COMM, TEST_COMM, finish, until_finished

PR_SET_NAME = 15


def test_adopts_a_process_whose_comm_is_not_utf8(sidecar, grpc_receiver, lone_python):
    """A comm cut inside a multi-byte character (prctl PR_SET_NAME): the process is adopted, its comm decoded
    as a kernel record's bytes are."""
    renamed = subprocess.Popen(
        [
            lone_python,
            "-c",
            f"import ctypes, sys; ctypes.CDLL(None).prctl({PR_SET_NAME}, b'py-caf\\xc3', 0, 0, 0); "
            "print('renamed', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={"PATH": "/usr/bin"},
    )
    try:
        assert renamed.stdout.readline() == b"renamed\n"
        assert Path(f"/proc/{renamed.pid}/comm").read_bytes() == b"py-caf\xc3\n"
        side = sidecar("--match", LONE_COMM, endpoint=grpc_receiver.endpoint, env=QUIET)  # adopts at start
        assert any("adopted" in line for line in side.lines)
    finally:
        finish(renamed)
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(renamed.pid))
    assert span.attributes["otelproc.comm"] == "py-caf\\xc3"  # as a kernel record's bytes decode
    assert span.attributes["otelproc.start.source"] == "adopted"
    assert side.proc.poll() is None


def test_a_non_utf8_argv_does_not_take_its_batch_down(sidecar, grpc_receiver, lone_python, tmp_path):
    """An adopted python runs a script whose name is not UTF-8 (the span is named after it),
    and ends within one batch of five others: all six spans arrive."""
    link = tmp_path / LONE_COMM
    link.symlink_to(lone_python)
    script = os.fsencode(tmp_path) + b"/job-\xfe.py"
    Path(os.fsdecode(script)).write_text("import sys; sys.stdin.read()")
    odd = subprocess.Popen([bytes(link), script, b"arg-\xfe"], stdin=subprocess.PIPE, env={"PATH": "/usr/bin"})
    try:
        time.sleep(0.3)
        side = sidecar(
            "--match",
            LONE_COMM,
            "--start-span-delay",
            "3600",
            endpoint=grpc_receiver.endpoint,
            env={**QUIET, "OTEL_BSP_SCHEDULE_DELAY": "3000"},
        )
        others = [until_finished(str(link), f"other-{i}") for i in range(5)]
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


def test_a_process_that_cannot_be_adopted_is_counted_and_the_rest_adopted(test_python, monkeypatch):
    """Adoption at start: one process whose 'adopt' event raises (no /proc entry does so today; the
    tracker is made to, for one pid) is counted under stage 'adopt' and skipped; the others are
    adopted, and otelproc starts."""
    from otelproc import cli, config
    from otelproc.kernel.probe import Probe, ProbeConfig
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from otelproc.sidecar.loop import build_sidecar

    args = ["run", "--match", TEST_COMM, "--exporter", "console", "--state-file", "", "--pin-dir", ""]
    sidecar = build_sidecar(
        config.resolve("run", cli.build_parser().parse_args(args), environ={}),
        SimpleSpanProcessor(InMemorySpanExporter()),
    )
    children = [until_finished(test_python, f"adoptee-{i}") for i in range(3)]
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
    assert {pid for pid, _ticks in sidecar.tracker.processes} == {children[0].pid, children[2].pid}
    assert sidecar.stats.failures == {"adopt": 1}


def test_a_process_the_sweep_cannot_adopt_costs_only_itself(test_python, monkeypatch):
    """A sweep's findings are applied one process at a time: one whose 'adopt' event raises is
    counted under stage 'adopt' and skipped; the processes found after it are still adopted."""
    import collections

    from otelproc.clock import BootClock
    from otelproc.stats import Stats
    from otelproc.sidecar import adoption
    from otelproc.sidecar.reconcile import Findings, Reconciler
    from otelproc.sidecar.tracker import Tracker

    children = [until_finished(test_python, f"found-{i}") for i in range(3)]
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
        reconciler = Reconciler(
            tracker, None, stats, lambda pid: None, lambda skip: (), lambda stage, exc: failed.append(stage)
        )
        assert reconciler.apply(findings, time.monotonic_ns() + 10_000_000_000) == []
    finally:
        finish(*children)
    assert {pid for pid, _ticks in tracker.processes} == {children[0].pid, children[2].pid}
    assert failed == ["adopt"] and stats.reconciled["exec_missed"] == 2 and not findings.found
