"""The words every role shares: what happened to a process, as events, and the text rules for what the kernel gives.

The kernel side builds these events from ring-buffer records (kernel/decoder.py),
the sidecar from /proc (sidecar/adoption.py), and the app side reads its own
process's environment with the same rules. Nothing here loads the kernel side.
"""

from __future__ import annotations

import os
from enum import Enum
from typing import NamedTuple

from otelproc.clock import rfc3339

TASK_COMM_LEN = 16  # the kernel keeps this many bytes of a task's name, its NUL included
EXE_NAME_LEN = 64  # #define in bpf/otelproc.h: the executable-name key of the match list
NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# The only environment variables otelproc ever keeps (see docs/security.md).
OTEL_ENV_ALLOWLIST = ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "TRACEPARENT", "TRACESTATE")
_ENV_NEEDLES = tuple((name, name.encode() + b"=", b"\0" + name.encode() + b"=") for name in OTEL_ENV_ALLOWLIST)

# What a lifetime span can say the process used, by group (the --usage setting). Each attribute
# costs about 2 µs per lifetime in the OTLP encoder, more than the kernel takes to read it all.
USAGE_GROUPS = ("cpu", "memory", "faults", "switches", "io")
DEFAULT_USAGE = "cpu,memory"


class EventKind(str, Enum):
    """What happened to a process. A str, so that kinds print and serialize as their names."""

    EXEC = "exec"
    FORK = "fork"
    EXIT = "exit"
    SIGNAL = "signal"  # a signal that may end it was sent to it
    OOM = "oom"  # the OOM killer chose it
    REGION = "region"  # it created its span region (otelproc/region.py)
    ADOPT = "adopt"  # found running in /proc, not seen by the kernel side

    def __str__(self) -> str:
        return self.value


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
    """One exec, fork or exit of a tracked process, a signal sent to it, the OOM killer's choice of it, or
    the creation of its span region.
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
    truncated: tuple[str, ...]  # parts the kernel cut to its bounds: "exe", "argv", "env"; "usage" (exit)
    untracked: bool  # the kernel's tracked map was full: no exit will follow
    otel_env: tuple[tuple[str, str], ...]  # allowlisted variables from the exec's environment
    usage: Usage | None = None  # exit only
    sent: SignalSent | None = None  # signal only
    oom: OomKill | None = None  # oom only
    region_fd: int | None = None  # region only: the region's descriptor in the process

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
