"""The tracker's table of live processes: keys, eviction, execs, forks, owners, signals, program names."""

from __future__ import annotations

import signal


from otelproc.model import SignalSent
from otelproc.otel.spans import SpanBuilder
from otelproc.sidecar.owners import Owners
from otelproc.sidecar.tracker import MAX_SIGNALS, Ended, Tracker
from support.events import event


def test_reused_pid_is_two_processes():
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 100, ticks=5))
    tracker.handle(event("exec", 100, ticks=9))  # the first one's exit was missed
    assert set(tracker.processes) == {(100, 9)}
    assert [p.key for p in tracker.superseded] == [(100, 5)]
    ended = tracker.handle(event("exit", 100, ticks=9, exit_code=0))
    assert ended.process.key == (100, 9) and len(tracker) == 0


def test_full_table_evicts_oldest_and_still_ends_its_span():
    tracker = Tracker(max_processes=2, started_span_after_ns=0)
    for pid in (1, 2, 3):
        tracker.handle(event("exec", pid, ticks=pid))
    assert tracker.stats.drops["table_full"] == 1 and (1, 1) not in tracker.processes
    ended = tracker.handle(event("exit", 1, ticks=1, exit_code=2))
    assert ended.process.origin == "exit" and ended.exit_code == 2
    assert tracker.stats.reconciled["exec_missed"] == 1


def test_exec_again_keeps_the_span_and_records_the_exec():
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 7, ticks=1, comm="uvicorn", argv=("/usr/bin/env", "python3", "/bin/uvicorn")))
    tracker.handle(event("exec", 7, ticks=1, time=5_000, argv=("python3", "/bin/uvicorn", "app:app")))
    (process,) = tracker.processes.values()
    assert process.start_time == 1_001 and [e.time for e in process.execs] == [5_000]
    assert process.program == "uvicorn"


def test_forked_child_inherits_program_and_parent():
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 10, ticks=1, otel_env=(("OTEL_SERVICE_NAME", "svc"),)))
    tracker.handle(event("fork", 11, ticks=2, ppid=10, exe=None, argv=None))
    child = tracker.processes[(11, 2)]
    parent = tracker.processes[(10, 1)]
    assert child.argv == parent.argv and child.otel_env == {"OTEL_SERVICE_NAME": "svc"}
    assert (
        child.span_place.trace_id == parent.span_place.trace_id
        and child.span_place.parent_span_id == parent.span_place.span_id
    )


def test_started_spans_come_due_once():
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 10, ticks=1))
    assert [p.pid for p in tracker.take_due_started_spans(2**62)] == [10]
    assert list(tracker.take_due_started_spans(2**62)) == []


def test_an_exec_keeps_the_owner_its_fork_gave_it():
    """A child gone before its exec record is read (pid 4000000 is past pid_max) in a container: its
    owner is the one its fork gave it, not lost to a /proc look that finds nothing."""
    tracker = Tracker(max_processes=10, started_span_after_ns=0, owners=Owners())
    container = dict(pidns=4026532999, uid=1000)
    tracker.handle(event("exec", 4_000_000, ticks=1, **container))
    parent = tracker.processes[(4_000_000, 1)]
    assert parent.owner is None  # gone, and not in otelproc's pid namespace: nobody to ask
    parent.owner = "app"  # as the sidecar found it while the parent ran
    tracker.handle(event("fork", 4_000_001, ticks=2, ppid=4_000_000, **container))
    tracker.handle(event("exec", 4_000_001, ticks=2, ppid=4_000_000, **container))
    assert tracker.processes[(4_000_001, 2)].owner == "app"
    tracker.handle(event("exec", 4_000_001, ticks=2, ppid=4_000_000, pidns=4026532999, uid=0))  # a new uid
    assert tracker.processes[(4_000_001, 2)].owner is None


def test_signals_kept_per_process_are_bounded_and_become_span_events():
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 10, ticks=1))
    for n in range(MAX_SIGNALS + 4):
        sent = SignalSent(2_000 + n, signal.SIGHUP, 0, False, 500 + n, "sender")
        tracker.handle(event("signal", 10, ticks=1, sent=sent))
    tracker.handle(event("signal", 99, ticks=1, sent=sent))  # not a tracked process: ignored
    ended = tracker.handle(event("exit", 10, ticks=1, signal=signal.SIGKILL))
    assert ended.process.signals_dropped == 4
    assert [s.sender_pid for s in ended.process.signals] == list(range(504, 504 + MAX_SIGNALS))
    span = SpanBuilder("default", {"host.name": "h"}).lifetime(ended)
    assert span.attributes["otelproc.signals.dropped"] == 4
    signal_events = [e for e in span.events if e.name == "signal"]
    assert len(signal_events) == MAX_SIGNALS
    assert dict(signal_events[0].attributes) == {
        "otelproc.signal.name": "SIGHUP",
        "otelproc.signal.code": "SI_USER",
        "otelproc.signal.sender": "process",
        "otelproc.signal.sender_pid": 504,
        "otelproc.signal.sender_name": "sender",
    }


def test_a_process_that_execs_in_a_loop_keeps_a_bounded_history():
    """Execs beyond the span event limit are let go (and counted), not kept forever."""
    from otelproc.clock import BootClock
    from otelproc.kernel.decoder import decode, default_layout  # the shipped object's layout, from its BTF

    layout, clock = default_layout(), BootClock()
    tracker = Tracker(16, 10**18)
    exec_record = layout.pack(b"/bin/x\0x\0", kind=1, pid=4242, vpid=4242, start_time_ns=10**9, exe_len=7, argv_len=2)
    for _ in range(1000):
        tracker.handle(decode(exec_record, clock))
    (process,) = tracker.processes.values()
    assert len(process.execs) == 128 and process.execs_dropped == 1000 - 1 - 128
    span = SpanBuilder("svc", {}).lifetime(Ended(process, process.start_time + 1, 0, None, False))
    assert len(span.events) == 128 and span.dropped_events == 1000 - 1 - 128
