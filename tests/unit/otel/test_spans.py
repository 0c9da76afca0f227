"""Span contents: how a process ended, resources, usage groups, attributes left out."""

from __future__ import annotations

import time
import types


from otelproc.identity import TraceBound
from otelproc.model import USAGE_GROUPS, OomKill, SignalSent, Usage
from otelproc.otel.spans import (
    CLEAN_SIGNALS,
    SpanBuilder,
    exit_status,
    parse_resource_attributes,
)
from otelproc.sidecar.tracker import Ended, Tracker
from support.events import event


def _ended(code, sig, core=False, signals=(), oom=None, parent=(1, None)):
    ppid, parent_program = parent
    process = types.SimpleNamespace(pid=100, signals=list(signals), oom=oom, ppid=ppid, parent_program=parent_program)
    return Ended(process, 10_000_000_000, code, sig, core)


def _sent(sig, sender_pid=0, comm="", code=0, from_kernel=False, at=0):
    return SignalSent(at, sig, code, from_kernel, sender_pid, comm)


def test_exit_status_descriptions():
    def status(code, sig, core=False, signals=(), oom=None, clean=CLEAN_SIGNALS):
        s, err, reason, _ = exit_status(_ended(code, sig, core, signals, oom), clean)
        assert s.status_code.name != "ERROR" or s.description == reason
        return s.status_code.name, reason, err

    assert status(0, None) == ("OK", "exit status 0", None)
    assert status(3, None) == ("ERROR", "exit status 3", "3")
    assert status(None, None) == ("UNSET", "ended; its exit was not seen", None)
    assert status(None, 9) == ("ERROR", "killed by SIGKILL", "SIGKILL")
    segv = [_sent(11, code=1, from_kernel=True)]
    assert status(None, 11, True, segv) == (
        "ERROR",
        "killed by SIGSEGV from the kernel (SEGV_MAPERR, core dumped)",
        "SIGSEGV",
    )
    assert status(None, 11, True) == ("ERROR", "killed by SIGSEGV (core dumped)", "SIGSEGV")
    gunicorn = _sent(15, 812, "gunicorn")
    assert status(None, 15, signals=[gunicorn]) == ("OK", "stopped by SIGTERM from pid 812 (gunicorn)", None)
    # Handled, then re-raised by the process itself: the one that asked it to stop is named.
    assert (
        status(None, 15, signals=[gunicorn, _sent(15, 100, "uvicorn", code=-6)])[1]
        == "stopped by SIGTERM from pid 812 (gunicorn)"
    )
    assert status(None, 2, signals=[_sent(2, 100, "python", code=-6)])[1] == "stopped by SIGINT from itself"
    assert status(None, 15, signals=[gunicorn], clean=frozenset()) == (
        "ERROR",
        "killed by SIGTERM from pid 812 (gunicorn)",
        "SIGTERM",
    )
    # A clean signal that dumps core (SIGQUIT is not clean; a core dump never is).
    assert status(None, 3, True)[0] == "ERROR"
    memcg = OomKill(0, True, "otp-oom", 0, 0, 0, 0, 0, 0)
    assert status(None, 9, signals=[_sent(9, code=0x80, from_kernel=True)], oom=memcg) == (
        "ERROR",
        "killed by SIGKILL from the OOM killer (memory cgroup limit, cgroup otp-oom)",
        "OOMKilled",
    )
    system = memcg._replace(memcg=False, cgroup="")
    assert status(None, 9, oom=system)[1] == "killed by SIGKILL from the OOM killer (system out of memory)"


def test_a_worker_its_server_gives_up_on_says_why():
    def status(code, sig, signals, parent):
        s, err, reason, _ = exit_status(_ended(code, sig, signals=signals, parent=parent))
        return s.status_code.name, reason, err

    gunicorn = (812, "gunicorn")
    abort = _sent(6, 812, "gunicorn")
    # gunicorn's worker timeout: SIGABRT, handled, then an exit whose status says nothing of it.
    assert status(0, None, [abort], gunicorn) == (
        "ERROR",
        "aborted by SIGABRT from pid 812 (gunicorn): worker timeout",
        "SIGABRT",
    )
    assert status(1, None, [abort], gunicorn)[1] == "aborted by SIGABRT from pid 812 (gunicorn): worker timeout"
    # From a process that is not its master: an abort all the same, with no server's reason.
    assert status(0, None, [_sent(6, 900, "kill")], gunicorn)[1] == "aborted by SIGABRT from pid 900 (kill)"
    # Long before the exit: that abort was handled and the worker lived on.
    old = SignalSent(-30_000_000_000, 6, 0, False, 812, "gunicorn")
    assert status(0, None, [old], gunicorn) == ("OK", "exit status 0", None)
    # Raised by itself (abort()): the signal ended it, as any other.
    assert status(None, 6, [_sent(6, 100, "python3", code=-6)], gunicorn)[1] == "killed by SIGABRT from itself"
    # uvicorn kills a worker its health check finds unresponsive; and gunicorn's SIGKILL has no reason of its own.
    uvicorn = (700, "uvicorn")
    assert status(None, 9, [_sent(9, 700, "uvicorn")], uvicorn)[1] == (
        "killed by SIGKILL from pid 700 (uvicorn): unresponsive worker"
    )
    assert status(None, 9, [_sent(9, 812, "gunicorn")], gunicorn)[1] == "killed by SIGKILL from pid 812 (gunicorn)"
    # gunicorn's SIGKILL after its abort went unanswered (a worker stuck in a C call), or after its stop did.
    assert status(None, 9, [abort, _sent(9, 812, "gunicorn", at=1_000)], gunicorn)[1] == (
        "killed by SIGKILL from pid 812 (gunicorn): worker timeout, still running after SIGABRT"
    )
    for stop in (15, 3):
        assert status(None, 9, [_sent(stop, 812, "gunicorn"), _sent(9, 812, "gunicorn", at=1_000)], gunicorn)[1] == (
            "killed by SIGKILL from pid 812 (gunicorn): still running after --graceful-timeout"
        )


def test_every_way_of_ending_has_one_outcome_word():
    def outcome(code, sig, signals=(), oom=None, parent=(1, None)):
        return exit_status(_ended(code, sig, signals=signals, oom=oom, parent=parent)).outcome

    assert outcome(0, None) == "ok"
    assert outcome(3, None) == outcome(255, None) == "exit_status"
    assert outcome(None, None) == "unknown"
    assert outcome(None, 9) == outcome(None, 11) == "signal"
    assert outcome(None, 15, [_sent(15, 812, "gunicorn")]) == "clean_stop"
    memcg = OomKill(0, True, "otp-oom", 0, 0, 0, 0, 0, 0)
    assert outcome(None, 9, [_sent(9, code=0x80, from_kernel=True)], memcg) == "oom_kill"
    # gunicorn's worker timeout exits with status 0 after its SIGABRT: a signal ended it, not an exit.
    assert outcome(0, None, [_sent(6, 812, "gunicorn")], (812, "gunicorn")) == "signal"


def test_a_lifetime_span_says_whether_its_process_had_a_started_span():
    builder = SpanBuilder("svc", {})
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 10, ticks=1))
    tracker.handle(event("exec", 11, ticks=2))
    long_lived = next(p for p in tracker.take_due_started_spans(time.time_ns()) if p.pid == 10)
    started = builder.started(long_lived)
    quick, slow = (tracker.handle(event("exit", pid, ticks=t, exit_code=0)) for pid, t in ((11, 2), (10, 1)))
    assert started.attributes["otelproc.span"] == "started" and "otelproc.started_span" not in started.attributes
    assert builder.lifetime(slow).attributes["otelproc.started_span"] is True
    assert "otelproc.started_span" not in builder.lifetime(quick).attributes
    assert builder.lifetime(quick).context.span_id == quick.process.span_place.span_id


def test_resource_attributes_parsing_counts_malformed():
    attrs, bad = parse_resource_attributes("team=pay%2Cments, region = eu ,broken,=nokey")
    assert attrs == {"team": "pay,ments", "region": "eu"} and bad == 2


def test_resources_are_built_once_per_service():
    builder = SpanBuilder("default", {"host.name": "h"})
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 1, ticks=1, otel_env=(("OTEL_SERVICE_NAME", "a"),)))
    tracker.handle(event("exec", 2, ticks=2, otel_env=(("OTEL_SERVICE_NAME", "a"),)))
    tracker.handle(event("exec", 3, ticks=3))
    a1, a2, d = (builder.resource(p) for p in tracker.processes.values())
    assert a1 is a2 and a1.attributes["service.name"] == "a" and d.attributes["service.name"] == "default"


def _lifetime(builder: SpanBuilder, cgroup_path: str | None = None, **exec_fields: object) -> dict[str, object]:
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 10, ticks=1, **exec_fields))
    used = Usage(3_000_000, 1_000_000, 9 << 20, 1_150, 0, 2, 3, 0, 4096)
    ended = tracker.handle(event("exit", 10, ticks=1, exit_code=0, usage=used, comm=exec_fields.get("comm", "python3")))
    return dict(builder.lifetime(ended, cgroup_path).attributes)


def test_usage_groups_say_what_a_span_carries():
    default = _lifetime(SpanBuilder("svc", {}))
    assert {
        k
        for k in default
        if k.startswith(("process.cpu", "otelproc.memory", "process.paging", "process.context", "process.disk"))
    } == {"process.cpu.time.user", "process.cpu.time.system", "otelproc.memory.peak"}
    assert default["process.cpu.time.user"] == 0.003 and default["otelproc.memory.peak"] == 9 << 20
    everything = _lifetime(SpanBuilder("svc", {}, usage=frozenset(USAGE_GROUPS)))
    assert everything["process.paging.faults.minor"] == 1_150 and everything["process.disk.io.write"] == 4096
    assert everything["process.context_switches.involuntary"] == 3
    assert "process.paging.faults.major" not in everything and "process.disk.io.read" not in everything  # zero
    io_only = _lifetime(SpanBuilder("svc", {}, usage=frozenset({"io"})))
    assert "process.cpu.time.user" not in io_only and io_only["process.disk.io.write"] == 4096


def test_attributes_that_would_repeat_another_are_left_out():
    builder = SpanBuilder("svc", {})
    plain = _lifetime(builder, comm="python3", exe="/usr/bin/python3")
    assert "process.vpid" not in plain and "otelproc.comm" not in plain and "process.exit.time" not in plain
    cut = _lifetime(builder, comm="python-otp12345", exe="/venv/bin/python-otp1234567")  # the kernel's 15 bytes
    assert "otelproc.comm" not in cut
    contained = _lifetime(builder, vpid=7, comm="python3", exe="/usr/bin/python3.11", cgroup="app.service")
    assert contained["process.vpid"] == 7 and contained["process.pid"] == 10
    assert contained["otelproc.comm"] == "python3" and contained["otelproc.cgroup"] == "app.service"
    with_path = _lifetime(builder, cgroup="app.service", cgroup_path="0::/system.slice/app.service")
    assert "otelproc.cgroup" not in with_path and with_path["process.linux.cgroup"] == "0::/system.slice/app.service"
    other_leaf = _lifetime(builder, cgroup="mem-7", cgroup_path="0::/system.slice/app.service")  # a v1 memory cgroup
    assert other_leaf["otelproc.cgroup"] == "mem-7"


def test_a_child_past_the_trace_bound_links_back_to_its_parent_from_its_process_span():
    """A worker started after the bound is a root span of its own trace, with a link to its master's process
    span and the master's key to search by; its lifetime span, under its 'started' span, needs no link."""
    builder = SpanBuilder("svc", {})
    tracker = Tracker(max_processes=10, started_span_after_ns=0, bound=TraceBound(spans=4, window_ticks=6000))
    tracker.handle(event("exec", 10, ticks=1))
    tracker.handle(event("fork", 11, ticks=2, ppid=10))  # the first child: in the master's trace
    tracker.handle(event("fork", 12, ticks=3, ppid=10))  # pid offset 2 = spans / 2: past the bound
    tracker.handle(event("fork", 13, ticks=4, ppid=10))
    master, joined, past, short_lived = (tracker.processes[(pid, t)] for pid, t in ((10, 1), (11, 2), (12, 3), (13, 4)))
    for child in (joined, past):
        assert builder.started(child).parent is not None or child is past
    started = builder.started(past)
    assert started.parent is None and started.context.trace_id != master.span_place.trace_id
    ((link,),) = [started.links]
    assert (link.context.trace_id, link.context.span_id) == (master.span_place.trace_id, master.span_place.span_id)
    assert link.attributes == {"otelproc.link": "parent"}
    assert started.attributes["otelproc.parent.key"] == master.identity.key
    assert not builder.started(joined).links and "otelproc.parent.key" not in builder.started(joined).attributes
    past.started_span_sent = True
    assert not builder.lifetime(tracker.handle(event("exit", 12, ticks=3, exit_code=0))).links
    lifetime = builder.lifetime(tracker.handle(event("exit", 13, ticks=4, exit_code=0)))  # its only span
    assert lifetime.parent is None and [ln.attributes["otelproc.link"] for ln in lifetime.links] == ["parent"]
