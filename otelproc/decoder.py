"""Ring-buffer records to typed, immutable ProcessEvents with wall-clock times.

The environment block of an exec is parsed here and dropped: only the
OpenTelemetry variables in OTEL_ENV_ALLOWLIST survive into the event.
"""

from __future__ import annotations

import errno
import os
from functools import lru_cache
from typing import NamedTuple

from otelproc import record
from otelproc.clock import BootClock, rfc3339
from otelproc.libbpf import LibbpfError
from otelproc.record import DEFAULT_OBJECT, KERNEL_KINDS, EventKind, EventLayout

NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")

# The only environment variables otelproc ever keeps (see docs/security.md).
OTEL_ENV_ALLOWLIST = ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "TRACEPARENT", "TRACESTATE")
_ENV_NEEDLES = tuple((name, name.encode() + b"=", b"\0" + name.encode() + b"=") for name in OTEL_ENV_ALLOWLIST)


class ProcessEvent(NamedTuple):
    """One exec, fork or exit of a tracked process. Times are Unix-epoch nanoseconds."""

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

    def to_json_dict(self) -> dict[str, object]:
        d = self._asdict()
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
    exit_code = signal = None
    core = False
    if kind is EventKind.EXIT:
        signal = r.exit_code & 0x7F or None
        exit_code = None if signal else (r.exit_code >> 8) & 0xFF
        core = bool(r.exit_code & 0x80)
    offset = clock.offset_ns
    return ProcessEvent(
        kind=kind,
        time=r.time_ns + offset,
        pid=r.pid,
        ppid=r.ppid,
        vpid=r.vpid,
        pidns=r.pidns,
        tid=r.tid,
        uid=r.uid,
        gid=r.gid,
        comm=_cstr(r.comm),
        exe=exe,
        argv=argv,
        start_time=r.start_time_ns + offset,
        start_ticks=r.start_time_ns // NS_PER_TICK,
        exit_code=exit_code,
        signal=signal,
        core_dumped=core,
        cgroup_id=r.cgroup_id,
        cgroup=_cstr(r.cgroup),
        truncated=_truncated(r.flags),
        untracked=bool(r.flags & record.EVENT_F_UNTRACKED),
        otel_env=otel_env,
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
