"""Ring-buffer records to typed, immutable ProcessEvents with wall-clock times.

The environment block of an exec is parsed here and dropped: only the
OpenTelemetry variables in OTEL_ENV_ALLOWLIST survive into the event.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from otelproc.clock import BootClock
from otelproc.errors import BrokenInstallError
from otelproc.kernel import record
from otelproc.kernel.record import DEFAULT_OBJECT, KERNEL_KINDS, EventLayout
from otelproc.model import (
    NS_PER_TICK,
    PAGE_SIZE,
    EventKind,
    OomKill,
    ProcessEvent,
    SignalSent,
    Usage,
    split_argv,
    parse_otel_env,
    text,
)


def _cstr(raw: bytes) -> str:
    return text(raw.split(b"\0", 1)[0])


def _truncated(flags: int) -> tuple[str, ...]:
    parts = []
    if flags & record.EVENT_F_EXE_CUT:
        parts.append("exe")
    if flags & record.EVENT_F_ARGV_CUT:
        parts.append("argv")
    if flags & record.EVENT_F_ENV_CUT:
        parts.append("env")
    if flags & record.EVENT_F_USAGE_CUT:
        parts.append("usage")
    return tuple(parts)


def cpu_split(cpu_ns: int, utime_ns: int, stime_ns: int) -> tuple[int, int]:
    """User and system time from the exact total and the tick samples, as getrusage() splits them."""
    if stime_ns == 0:
        return cpu_ns, 0
    if utime_ns == 0:
        return 0, cpu_ns
    system = cpu_ns * stime_ns // (stime_ns + utime_ns)
    return cpu_ns - system, system


def _usage(r: Any) -> Usage:
    user, system = cpu_split(r.cpu_ns, r.utime_ns, r.stime_ns)
    return Usage(
        user, system, r.maxrss_pages * PAGE_SIZE, r.min_flt, r.maj_flt, r.nvcsw, r.nivcsw, r.read_bytes, r.write_bytes
    )


def _oom(r: Any, time: int) -> OomKill:
    return OomKill(
        time=time,
        memcg=bool(r.flags & record.EVENT_F_OOM_MEMCG),
        cgroup=_cstr(r.cgroup) if r.flags & record.EVENT_F_OOM_MEMCG else "",
        total_vm=r.total_vm * PAGE_SIZE,
        anon_rss=r.anon_rss * PAGE_SIZE,
        file_rss=r.file_rss * PAGE_SIZE,
        shmem_rss=r.shmem_rss * PAGE_SIZE,
        pgtables=r.pgtables_bytes,
        score_adj=r.score_adj,
    )


class MalformedRecord(ValueError):
    """A record no probe of this layout writes: too short, of no known kind, or with lengths past its end."""


def decode(raw: bytes, clock: BootClock, layout: EventLayout | None = None) -> ProcessEvent:
    """One record as the kernel wrote it (only exec records go on past the fixed part, into data[]).

    layout: the struct event of the object that wrote it; default, the shipped object's.
    Anything else raises MalformedRecord, and nothing else.
    """
    layout = layout or default_layout()
    base = layout.fixed.size
    if len(raw) < base:
        raise MalformedRecord(f"a record of {len(raw)} bytes, shorter than its {base}-byte fixed part")
    r = layout.unpack(raw)
    exe = argv = None
    otel_env: tuple[tuple[str, str], ...] = ()
    kind = KERNEL_KINDS.get(r.kind)
    if kind is None:
        raise MalformedRecord(f"unknown event kind {r.kind}")
    if kind is EventKind.EXEC:
        if base + r.exe_len + r.argv_len + r.env_len > len(raw):
            raise MalformedRecord(f"exec record of {len(raw)} bytes with data lengths past its end")
        exe = _cstr(raw[base : base + r.exe_len])
        argv_at, env_at = base + r.exe_len, base + r.exe_len + r.argv_len
        argv = split_argv(raw[argv_at:env_at])
        otel_env = parse_otel_env(raw[env_at : env_at + r.env_len])
    exit_code = signal = usage = sent = oom = region_fd = None
    core = False
    offset = clock.offset_ns
    if kind is EventKind.EXIT:
        signal = r.exit_code & 0x7F or None
        exit_code = None if signal else (r.exit_code >> 8) & 0xFF
        core = bool(r.exit_code & 0x80)
        usage = _usage(r)
    elif kind is EventKind.SIGNAL:
        from_kernel = bool(r.flags & record.EVENT_F_SENDER_KERNEL)
        sent = SignalSent(r.time_ns + offset, r.signo, r.si_code, from_kernel, r.sender_pid, _cstr(r.sender_comm))
    elif kind is EventKind.OOM:
        oom = _oom(r, r.time_ns + offset)
    elif kind is EventKind.REGION:
        region_fd = r.region_fd
    # Positional: the fields in ProcessEvent's order (a keyword call costs a microsecond more per record).
    return ProcessEvent(
        kind,
        r.time_ns + offset,
        r.pid,
        r.ppid,
        r.vpid,
        r.pidns,
        r.tid,
        r.uid,
        r.gid,
        _cstr(r.comm),
        exe,
        argv,
        r.start_time_ns + offset,
        r.start_time_ns // NS_PER_TICK,
        exit_code,
        signal,
        core,
        r.cgroup_id,
        _cstr(r.cgroup),
        _truncated(r.flags),
        bool(r.flags & record.EVENT_F_UNTRACKED),
        otel_env,
        usage,
        sent,
        oom,
        region_fd,
    )


@lru_cache(maxsize=1)
def default_layout() -> EventLayout:
    return EventLayout.from_object(DEFAULT_OBJECT)


def written_by(layout: EventLayout) -> list[int]:
    """The kinds of record an object of this layout writes: region records came with their part."""
    return [k for k, kind in KERNEL_KINDS.items() if kind is not EventKind.REGION or "region_fd" in layout.offsets]


def missing_field(layout: EventLayout) -> str | None:
    """A field this decoder reads that the struct event lacks; None when it can read every record."""
    try:
        for kind in written_by(layout):
            decode(layout.pack(kind=kind), BootClock(), layout)
    except AttributeError as exc:
        return getattr(exc, "name", None) or str(exc)
    return None


def check_layout(layout: EventLayout) -> None:
    """Refuses a struct event this decoder cannot read (a field it uses is missing), before any record."""
    missing = missing_field(layout)
    if missing is not None:
        raise BrokenInstallError(f"struct event in the BPF object has no field {missing}; rebuild it with `make bpf`")
