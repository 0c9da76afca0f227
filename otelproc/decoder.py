"""Ring-buffer records to typed, immutable ProcessEvents with wall-clock times.

The environment block of an exec is parsed here and dropped: only the
OpenTelemetry variables in OTEL_ENV_ALLOWLIST survive into the event.
"""

from __future__ import annotations

import errno
import os
from functools import lru_cache
from typing import Any, NamedTuple

from otelproc import record
from otelproc.clock import BootClock, rfc3339
from otelproc.libbpf import LibbpfError
from otelproc.record import DEFAULT_OBJECT, KERNEL_KINDS, EventKind, EventLayout

NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# The only environment variables otelproc ever keeps (see docs/security.md).
OTEL_ENV_ALLOWLIST = ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "TRACEPARENT", "TRACESTATE")
_ENV_NEEDLES = tuple((name, name.encode() + b"=", b"\0" + name.encode() + b"=") for name in OTEL_ENV_ALLOWLIST)


# What a lifetime span can say the process used, by group (the --usage setting). Each attribute
# costs about 2 µs per lifetime in the OTLP encoder, more than the kernel takes to read it all.
USAGE_GROUPS = ("cpu", "memory", "faults", "switches", "io")
DEFAULT_USAGE = "cpu,memory"


class Usage(NamedTuple):
    """What a process used over its life, all its threads together, as the kernel counted it at exit."""

    cpu_user_ns: int
    cpu_system_ns: int
    max_rss_bytes: int
    minor_faults: int
    major_faults: int
    voluntary_switches: int
    involuntary_switches: int
    disk_read_bytes: int
    disk_write_bytes: int


class SignalSent(NamedTuple):
    """A signal sent to a tracked process that could end it, and who sent it."""

    time: int
    signal: int
    code: int  # si_code: SI_USER, SI_TKILL, SI_KERNEL, SEGV_MAPERR, ...
    from_kernel: bool  # else sender_pid/sender_comm name the process that sent it
    sender_pid: int  # 0 when from the kernel or from outside the scope's pid namespace
    sender_comm: str


class OomKill(NamedTuple):
    """The OOM killer's choice of this process, with its memory as the killer saw it (bytes)."""

    time: int
    memcg: bool  # a memory cgroup's limit was reached (cgroup names it), not the system's memory
    cgroup: str
    total_vm: int
    anon_rss: int
    file_rss: int
    shmem_rss: int
    pgtables: int
    score_adj: int


class ProcessEvent(NamedTuple):
    """One exec, fork or exit of a tracked process, a signal sent to it or the OOM killer's choice of it.
    Times are Unix-epoch nanoseconds."""

    kind: EventKind
    time: int
    pid: int
    ppid: int
    vpid: int
    pidns: int
    tid: int
    uid: int
    gid: int
    comm: str
    exe: str | None
    argv: tuple[str, ...] | None
    start_time: int
    start_ticks: int  # the unit of /proc/<pid>/stat field 22: with pid, names the process
    exit_code: int | None  # exit status 0-255; None when a signal ended the process
    signal: int | None
    core_dumped: bool
    cgroup_id: int
    cgroup: str
    truncated: tuple[str, ...]  # parts the kernel cut to its bounds: "exe", "argv", "env"
    untracked: bool  # the kernel's tracked map was full: no exit will follow
    otel_env: tuple[tuple[str, str], ...]  # allowlisted variables from the exec's environment
    usage: Usage | None = None  # exit only
    sent: SignalSent | None = None  # signal only
    oom: OomKill | None = None  # oom only

    def to_json_dict(self) -> dict[str, object]:
        d = self._asdict()
        for name in ("usage", "sent", "oom"):
            value = getattr(self, name)
            d[name] = value._asdict() if value is not None else None
        d["time"] = rfc3339(self.time)
        d["start_time"] = rfc3339(self.start_time)
        d["argv"] = list(self.argv) if self.argv is not None else None
        d["truncated"] = list(self.truncated)
        d["otel_env"] = dict(self.otel_env)
        return d


def text(raw: bytes) -> str:
    """Kernel bytes to str; bytes that are not UTF-8 show as \\xNN instead of failing."""
    return raw.decode("utf-8", "backslashreplace")


def split_argv(block: bytes) -> tuple[str, ...]:
    """A NUL-separated argument block (the kernel's argv record, /proc/<pid>/cmdline) as arguments."""
    return tuple(text(block.rstrip(b"\0")).split("\0")) if block else ()


def _cstr(raw: bytes) -> str:
    return text(raw.split(b"\0", 1)[0])


def parse_otel_env(env: bytes) -> tuple[tuple[str, str], ...]:
    """The allowlisted variables of a NUL-separated environment block; the rest is not looked at."""
    found = []
    for name, at_start, inside in _ENV_NEEDLES:
        if env.startswith(at_start):
            start = len(at_start)
        else:
            pos = env.find(inside)
            if pos < 0:
                continue
            start = pos + len(inside)
        end = env.find(b"\0", start)
        found.append((name, text(env[start : end if end >= 0 else len(env)])))
    return tuple(found)


def _truncated(flags: int) -> tuple[str, ...]:
    parts = []
    if flags & record.EVENT_F_EXE_CUT:
        parts.append("exe")
    if flags & record.EVENT_F_ARGV_CUT:
        parts.append("argv")
    if flags & record.EVENT_F_ENV_CUT:
        parts.append("env")
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
    return Usage(user, system, r.maxrss_pages * PAGE_SIZE, r.min_flt, r.maj_flt, r.nvcsw, r.nivcsw,
                 r.read_bytes, r.write_bytes)


def _oom(r: Any, time: int) -> OomKill:
    return OomKill(
        time=time,
        memcg=bool(r.flags & record.EVENT_F_OOM_MEMCG),
        cgroup=_cstr(r.cgroup) if r.flags & record.EVENT_F_OOM_MEMCG else "",
        total_vm=r.oom_total_vm * PAGE_SIZE,
        anon_rss=r.oom_anon_rss * PAGE_SIZE,
        file_rss=r.oom_file_rss * PAGE_SIZE,
        shmem_rss=r.oom_shmem_rss * PAGE_SIZE,
        pgtables=r.oom_pgtables_bytes,
        score_adj=r.oom_score_adj,
    )


class MalformedRecord(ValueError):
    """A record no probe of this layout writes: too short, of no known kind, or with lengths past its end."""


def decode(raw: bytes, clock: BootClock, layout: EventLayout | None = None) -> ProcessEvent:
    """One record as the kernel wrote it (fork and exit records end before data[]).

    layout: the struct event of the object that wrote it; default, the shipped object's.
    Anything else raises MalformedRecord, and nothing else.
    """
    layout = layout or default_layout()
    base = layout.header.size
    if len(raw) < base:
        raise MalformedRecord(f"a record of {len(raw)} bytes, shorter than its {base}-byte header")
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
    exit_code = signal = usage = sent = oom = None
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
    # Positional: the fields in ProcessEvent's order (a keyword call costs a microsecond more per record).
    return ProcessEvent(
        kind, r.time_ns + offset, r.pid, r.ppid, r.vpid, r.pidns, r.tid, r.uid, r.gid, _cstr(r.comm), exe, argv,
        r.start_time_ns + offset, r.start_time_ns // NS_PER_TICK, exit_code, signal, core, r.cgroup_id,
        _cstr(r.cgroup), _truncated(r.flags), bool(r.flags & record.EVENT_F_UNTRACKED), otel_env, usage, sent, oom,
    )


@lru_cache(maxsize=1)
def default_layout() -> EventLayout:
    return EventLayout.from_object(DEFAULT_OBJECT)


def check_layout(layout: EventLayout) -> None:
    """Refuses a struct event this decoder cannot read (a field it uses is missing), before any record."""
    try:
        for kind in KERNEL_KINDS:
            decode(layout.pack(kind=kind), BootClock(), layout)
    except AttributeError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise LibbpfError(
            errno.EPROTO, f"struct event in the BPF object has no field {missing}; rebuild it with `make bpf`"
        ) from None
