"""The live process tree: which spans a process gets, with which ids and parents, in which order.

Every span the sidecar hands on must name a parent that is already out (or a remote one, or none), at
every moment of a service's life, so that Jaeger (and any other backend) never shows a missing parent;
no span id goes out twice; a process costs at most two spans, a short-lived one a single span; and a
request's link (the process span id, which the app side computes) names a span that is out.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otelproc import cli, config
from otelproc.identity import ProcessIdentity, boot_id
from otelproc.sidecar import loop, state
from otelproc.sidecar.tracker import MAX_WAITING
from support.events import event

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
WORKER_ARGV = ("python3", "-c", "from multiprocessing.spawn import spawn_main; spawn_main()", "--multiprocessing-fork")


class Later:
    """The time module an hour on, for the sidecar's loop: every 'started' span is due."""

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    @staticmethod
    def time_ns() -> int:
        return time.time_ns() + 3600 * 10**9


class Service:
    """A Sidecar fed events directly, its spans kept in the order it hands them on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, state_file: Path | None = None) -> None:
        args = cli.build_parser().parse_args(
            ["run", "--exporter", "console", "--state-file", str(state_file or ""), "--adopt", "false"]
        )
        self.memory = InMemorySpanExporter()
        self.sidecar = loop.build_sidecar(config.resolve("run", args, environ={}), SimpleSpanProcessor(self.memory))
        self.monkeypatch = monkeypatch

    def feed(self, kind: str, pid: int, ppid: int = 1, **kw: object) -> None:
        if kind == "exit":
            kw.setdefault("time", 1_000_000 + pid)  # a lifetime lasts (events start at 1_000 + pid)
        ended = self.sidecar.tracker.handle(event(kind, pid, ticks=pid, ppid=ppid, **kw))
        if ended is not None:
            self.sidecar.export_lifetime(ended)

    def delay_passes(self) -> None:
        with self.monkeypatch.context() as m:
            m.setattr(loop, "time", Later())
            sent = -1
            while len(self.spans) > sent:  # a turn of housekeeping is bounded in time: it may leave some
                sent = len(self.spans)
                self.sidecar.housekeeping()

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.memory.get_finished_spans())

    def of(self, pid: int) -> dict[str, ReadableSpan]:
        return {s.attributes["otelproc.span"]: s for s in self.spans if s.attributes["process.pid"] == pid}

    def check(self) -> None:
        """No span names a parent that was not out before it; no id twice; at most two spans a process;
        each span fits inside its parent or outlasts it, from no earlier (else Jaeger's UI warns of clock skew)."""
        out: dict[int, ReadableSpan] = {}
        for span in self.spans:
            parent = span.parent
            assert parent is None or parent.is_remote or parent.span_id in out, f"{span.name}: parent not out yet"
            assert span.context.span_id not in out, f"{span.name}: its id went out before"
            out[span.context.span_id] = span
            if parent is not None and not parent.is_remote:
                p = out[parent.span_id]
                inside = p.start_time <= span.start_time and span.end_time <= p.end_time
                longer = span.end_time - span.start_time > p.end_time - p.start_time and span.start_time >= p.start_time
                assert inside or longer, f"{span.name} under {p.name}: Jaeger would see clock skew"
        per_process: dict[str, int] = {}
        for span in self.spans:
            key = span.attributes["otelproc.process.key"]
            per_process[key] = per_process.get(key, 0) + 1
        assert max(per_process.values(), default=0) <= 2

    def links_resolve(self, pid: int) -> None:
        """The app side links to the process span: its id from the key alone, and it is out."""
        (span, *_) = self.of(pid).values()
        vpid, ticks = pid, pid
        target = ProcessIdentity(boot_id(), 4026531836, vpid, ticks).span_id()
        assert target in {s.context.span_id for s in self.spans if s.attributes["process.pid"] == pid}
        assert span.attributes["otelproc.process.key"].endswith(f"/{vpid}/{ticks}")


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Service:
    return Service(monkeypatch)


def test_a_running_service_is_a_tree_with_every_parent_out(service: Service):
    service.feed("exec", 100, argv=("python3", "-m", "uvicorn", "app:app", "--workers", "2"))
    service.feed("exec", 101, ppid=100, argv=WORKER_ARGV)
    service.feed("exec", 102, ppid=100, argv=WORKER_ARGV)
    assert service.spans == []  # nothing before the delay
    service.delay_passes()
    service.check()
    master, w1, w2 = (service.of(pid)["started"] for pid in (100, 101, 102))
    assert [s.name for s in (master, w1, w2)] == ["uvicorn started", "uvicorn worker started", "uvicorn worker started"]
    assert master.parent is None and w1.parent.span_id == w2.parent.span_id == master.context.span_id
    assert len({s.context.trace_id for s in service.spans}) == 1
    service.links_resolve(101)

    # A request in worker 101 runs a short-lived child; then 101 is killed and 103 takes its place.
    service.feed("exec", 110, ppid=101, argv=("python3", "-c", "print(1)"))
    service.feed("exit", 110, ppid=101, exit_code=0)
    child = service.of(110)
    assert list(child) == ["lifetime"] and child["lifetime"].parent.span_id == w1.context.span_id
    service.feed("exit", 101, ppid=100, signal=signal.SIGKILL)
    service.feed("exec", 103, ppid=100, argv=WORKER_ARGV)
    service.delay_passes()
    service.check()
    dead, new = service.of(101)["lifetime"], service.of(103)["started"]
    assert dead.parent.span_id == w1.context.span_id != dead.context.span_id  # under its own 'started' span
    assert dead.status.description == "killed by SIGKILL"
    assert new.parent.span_id == master.context.span_id
    service.links_resolve(101)  # the dead worker's requests still lead to its process span

    # The service stops: the tree completes into lifetime spans, each under its process's 'started' span.
    for pid in (102, 103, 100):
        service.feed("exit", pid, ppid=1 if pid == 100 else 100, signal=signal.SIGTERM)
    service.check()
    for pid in (100, 102, 103):
        spans = service.of(pid)
        assert spans["lifetime"].parent.span_id == spans["started"].context.span_id
    assert len(service.spans) == 2 * 5 - 1  # two a process, one for the short-lived child


def test_a_short_lived_process_is_one_span(service: Service):
    """A storm: processes that end before the delay, with no tracked parent, cost one span each."""
    for pid in range(200, 210):
        service.feed("exec", pid)
        service.feed("exit", pid, exit_code=0)
    service.delay_passes()
    service.check()
    assert len(service.spans) == 10 and {s.attributes["otelproc.span"] for s in service.spans} == {"lifetime"}
    assert all(
        s.context.span_id
        == ProcessIdentity(boot_id(), 4026531836, s.attributes["process.pid"], s.attributes["process.pid"]).span_id()
        for s in service.spans
    )


def test_a_child_of_a_young_parent_waits_for_its_parents_span(service: Service):
    """A child ends before its parent's 'started' span is due: its lifetime span waits for it (at most the
    delay), so that no span names a parent not out yet; nobody gets a span early."""
    service.feed("exec", 300)
    service.feed("exec", 301, ppid=300)
    service.feed("exec", 302, ppid=301)
    service.feed("exit", 302, ppid=301, exit_code=1)
    assert service.spans == []
    service.delay_passes()
    assert [(s.attributes["process.pid"], s.attributes["otelproc.span"]) for s in service.spans] == [
        (300, "started"),
        (301, "started"),
        (302, "lifetime"),
    ]
    service.feed("exit", 301, ppid=300, exit_code=0)
    service.feed("exit", 300, exit_code=0)
    service.check()
    assert len(service.spans) == 5


def test_a_short_lived_tree_is_one_span_a_process(service: Service):
    """python runs sh, which runs tr, all done within the delay: three spans, each parent before its children."""
    service.feed("exec", 310)
    service.feed("exec", 311, ppid=310, argv=("sh", "-c", "tr a b"))
    service.feed("exec", 312, ppid=311, argv=("tr", "a", "b"))
    for pid, ppid, time_ns in ((312, 311, 2_000), (311, 310, 3_000), (310, 1, 4_000)):
        service.feed("exit", pid, ppid=ppid, exit_code=0, time=time_ns)
    service.check()
    assert [(s.attributes["process.pid"], s.attributes["otelproc.span"]) for s in service.spans] == [
        (310, "lifetime"),
        (311, "lifetime"),
        (312, "lifetime"),
    ]
    service.delay_passes()
    assert len(service.spans) == 3


def test_at_a_stop_waiting_lifetimes_go_out_after_their_parents_started_span(service: Service):
    service.feed("exec", 320)
    service.feed("exec", 321, ppid=320)
    service.feed("exit", 321, ppid=320, exit_code=0)
    service.sidecar.release_waiting()
    service.check()
    assert [(s.attributes["process.pid"], s.attributes["otelproc.span"]) for s in service.spans] == [
        (320, "started"),
        (321, "lifetime"),
    ]
    service.delay_passes()
    assert len(service.spans) == 2  # no second 'started' span


def test_a_parent_keeps_a_bounded_number_of_lifetimes_waiting(service: Service):
    """Past MAX_WAITING, a young parent's 'started' span goes early: what waits stays bounded.
    (Children within the trace bound of it, so they hang from it.)"""
    service.feed("exec", 330)
    for pid in range(331, 331 + MAX_WAITING + 1):
        service.feed("exec", pid, ppid=330)
        service.feed("exit", pid, ppid=330, exit_code=0)
    service.check()
    assert len(service.spans) == MAX_WAITING + 2  # the parent's 'started' span, then every child's
    assert service.spans[0].attributes["process.pid"] == 330


def test_a_child_placed_under_traceparent_needs_no_parent_of_ours(service: Service):
    service.feed("exec", 400)
    service.feed("exec", 401, ppid=400, otel_env=(("TRACEPARENT", TP),))
    service.feed("exit", 401, ppid=400, exit_code=0)
    (span,) = service.spans  # the parent's 'started' span is not brought forward: the child hangs elsewhere
    assert span.parent.is_remote and span.parent.span_id == 0xB7AD6B7169203331
    assert span.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C


def test_started_spans_of_a_chain_each_outlast_their_parents(service: Service):
    """Jaeger's UI warns of clock skew on a child that neither fits inside its parent nor outlasts it."""
    for pid in (500, 501, 502):
        service.feed("adopt", pid, ppid=pid - 1)
    service.delay_passes()
    service.check()
    assert [s.attributes["process.pid"] for s in service.spans] == [500, 501, 502]
    assert [s.end_time - s.start_time for s in service.spans] == [1, 2, 3]


def test_a_restart_carries_on_with_the_same_ids_and_sends_nothing_twice(monkeypatch, tmp_path):
    path, config = tmp_path / "state.json", "c"
    first = Service(monkeypatch)
    first.feed("exec", 600)
    first.feed("exec", 601, ppid=600)
    first.delay_passes()
    state.save(path, list(first.sidecar.tracker.processes.values()), True, config, {})
    second = Service(monkeypatch)
    for process in state.load(path, config).processes:
        second.sidecar.tracker.add(process)
    second.delay_passes()
    assert second.spans == []  # their 'started' spans went out before the restart
    second.feed("exit", 601, ppid=600, exit_code=0)
    second.feed("exit", 600, exit_code=0)
    (before, after) = (first.spans, second.spans)
    combined = {s.context.span_id for s in before} | {s.context.span_id for s in after}
    assert len(combined) == 4
    for pid in (600, 601):
        assert second.of(pid)["lifetime"].parent.span_id == first.of(pid)["started"].context.span_id


def test_a_started_span_sent_by_an_older_otelproc_keeps_its_lifetime_span_id(monkeypatch, tmp_path):
    """Before state file version 4 the 'started' span was the lifetime span's child: after an upgrade
    that lifetime span keeps the process span id, so the old 'started' span's parent comes to exist."""
    first = Service(monkeypatch)
    first.feed("exec", 700)
    first.delay_passes()
    (process,) = first.sidecar.tracker.processes.values()
    written = state.to_dict(process, True)
    del written["legacy_started"]
    carried = state.from_dict(written, version=3)
    assert carried.started_span_sent and carried.legacy_started
    second = Service(monkeypatch)
    second.sidecar.tracker.add(carried)
    second.feed("exit", 700, exit_code=0)
    (lifetime,) = second.spans
    assert lifetime.context.span_id == process.identity.span_id() and lifetime.parent is None
