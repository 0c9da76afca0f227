"""What several unit tests build: events as the decoder or adoption would make them, representative
spans, and fuzzed ring-buffer records."""

from __future__ import annotations

import random
import signal
from typing import Iterator

from otelproc.model import USAGE_GROUPS, EventKind, OomKill, ProcessEvent, SignalSent, Usage
from otelproc.otel.spans import SpanBuilder, host_attributes
from otelproc.sidecar.tracker import MAX_SIGNALS, Ended, Tracker

CONTAINER = "a3f0" * 16


def event(kind: str, pid: int, ticks: int, ppid: int = 1, **kw: object) -> ProcessEvent:
    base = dict(
        kind=EventKind(kind),
        time=1_000 + ticks,
        pid=pid,
        ppid=ppid,
        vpid=pid,
        pidns=4026531836,
        tid=pid,
        uid=0,
        gid=0,
        comm="python3",
        exe="/usr/bin/python3",
        argv=("python3", "app.py"),
        start_time=ticks,
        start_ticks=ticks,
        exit_code=None,
        signal=None,
        core_dumped=False,
        cgroup_id=0,
        cgroup="",
        truncated=(),
        untracked=False,
        otel_env=(),
    )
    base.update(kw)
    return ProcessEvent(**base)


def representative_spans() -> list:
    """Lifetime and 'started' spans of processes that end every way the kernel reports, plus one unseen end;
    each with every usage group, the ones in containers with their own pid and a name they gave themselves;
    and a child the trace bound put in a trace of its own."""
    builder = SpanBuilder("svc", host_attributes(), usage=frozenset(USAGE_GROUPS))
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    spans = []
    used = Usage(1_500_000, 500_000, 64 << 20, 1_200, 3, 10, 4, 4096, 8192)
    memcg = OomKill(9_800, True, "app.service", 80 << 20, 70 << 20, 6 << 20, 0, 200 << 10, 0)

    def stopped_by_gunicorn(pid: int) -> list[ProcessEvent]:
        """More signals than a span keeps; the last a re-raise of the one that asked it to stop."""
        asked = [SignalSent(9_000 + n, signal.SIGHUP, 0, False, 812, "gunicorn") for n in range(MAX_SIGNALS)]
        asked += [
            SignalSent(9_500, signal.SIGTERM, 0, False, 812, "gunicorn"),
            SignalSent(9_600, signal.SIGTERM, -6, False, pid, "python3"),
        ]
        return [event("signal", pid, ticks=pid, sent=sent) for sent in asked]

    def oom_killed(pid: int) -> list[ProcessEvent]:
        return [
            event("signal", pid, ticks=pid, sent=SignalSent(9_700, signal.SIGKILL, 0x80, True, 0, "")),
            event("oom", pid, ticks=pid, oom=memcg),
        ]

    cases = [
        (dict(exit_code=3, usage=used), None),
        (dict(exit_code=None, signal=11, core_dumped=True, usage=used), None),
        (dict(exit_code=0, usage=used), None),
        (dict(exit_code=None, signal=signal.SIGTERM, usage=used), stopped_by_gunicorn),
        (dict(exit_code=None, signal=signal.SIGKILL, usage=used), oom_killed),
    ]
    for pid, (ending, before) in enumerate(cases, start=100):
        in_container = dict(cgroup=f"docker-{CONTAINER}.scope", truncated=("argv",), vpid=7, comm="gunicorn: work")
        tracker.handle(event("exec", pid, ticks=pid, **in_container))
        tracker.handle(event("exec", pid, ticks=pid, time=9_000, argv=("python3", "b.py"), **in_container))
        (process,) = [p for p in tracker.processes.values() if p.pid == pid]
        process.owner = "app"  # what the sidecar finds in the process's own /etc/passwd
        spans.append(builder.started(process, "0::/system.slice/app.service"))
        process.started_span_sent = True  # as the loop marks it when the span goes out
        for kernel_event in before(pid) if before else ():
            tracker.handle(kernel_event)
        ended = tracker.handle(event("exit", pid, ticks=pid, time=10_000, **ending))
        spans.append(builder.lifetime(ended, "0::/system.slice/app.service"))
    tracker.handle(event("exec", 200, ticks=200, exe=None, argv=None))
    spans.append(builder.lifetime(Ended.unseen(tracker.forget((200, 200)), 20_000)))
    tracker.handle(event("exec", 201, ticks=201, cgroup="app.service"))  # no cgroup v2 path known
    spans.append(builder.lifetime(Ended.between(tracker.forget((201, 201)), 20_000, 30_000)))  # while down
    tracker.handle(event("exec", 300, ticks=300))
    tracker.handle(event("fork", 900, ticks=301, ppid=300))  # past the trace bound: a trace of its own
    spans.append(builder.started(tracker.processes[(900, 301)]))
    return spans


def fuzzed_records(rng: random.Random) -> Iterator[bytes]:
    """Well-formed records with random fields, then cut, flipped, or replaced by noise.

    In the shipped object's layout: this reads its BTF through libbpf.so.1 (no privilege needed).
    """
    from otelproc.kernel.decoder import default_layout
    from otelproc.kernel.record import KERNEL_KINDS

    layout = default_layout()
    kinds = list(KERNEL_KINDS) + [0, 4, 0xFFFFFFFF]
    while True:
        data = rng.randbytes(rng.randrange(0, 700))
        lens = [rng.randrange(0, 300) for _ in range(3)]
        raw = layout.pack(
            data,
            kind=rng.choice(kinds),
            flags=rng.getrandbits(32),
            pid=rng.getrandbits(32),
            ppid=rng.getrandbits(32),
            tid=rng.getrandbits(32),
            vpid=rng.getrandbits(32),
            pidns=rng.getrandbits(32),
            uid=rng.getrandbits(32),
            gid=rng.getrandbits(32),
            exit_code=rng.getrandbits(32),
            time_ns=rng.getrandbits(63),
            start_time_ns=rng.getrandbits(63),
            cgroup_id=rng.getrandbits(64),
            exe_len=lens[0],
            argv_len=lens[1],
            env_len=lens[2],
            comm=rng.randbytes(16),
            cgroup=rng.randbytes(rng.randrange(0, 128)),
        )
        yield raw
        yield raw[: rng.randrange(0, len(raw) + 1)]
        flipped = bytearray(raw)
        for _ in range(rng.randrange(1, 8)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        yield bytes(flipped)
        yield rng.randbytes(rng.randrange(0, layout.fixed.size * 2))
