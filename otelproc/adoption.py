"""Processes already running when otelproc starts, read from /proc, as 'adopt' events.

A process can exit, or its pid be reused, while it is being read: every read
is of one pid, checked against the start time read first, and a process that
vanished or changed is skipped (and counted).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

from otelproc.clock import BootClock
from otelproc.decoder import NS_PER_TICK, ProcessEvent, parse_otel_env, text
from otelproc.loader import MatchRule, any_match
from otelproc.record import EventKind


@dataclass
class AdoptionStats:
    vanished: int = 0  # exited, or pid reused, while being read
    unreadable: int = 0  # permission denied: a capability is missing


def read_stat(pid: int) -> tuple[str, int, int]:
    """comm, ppid and start ticks from /proc/<pid>/stat (comm may hold spaces and parentheses)."""
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    head, _, tail = raw.rpartition(b")")
    fields = tail.split()
    return text(head.split(b"(", 1)[1]), int(fields[1]), int(fields[19])


def alive(pid: int, start_ticks: int) -> bool:
    """Still the same process (zombies count: their exit has not been reaped)."""
    try:
        return read_stat(pid)[2] == start_ticks
    except OSError:
        return False


def _nspid(pid: int) -> int:
    """The pid in the process's own (innermost) pid namespace."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return pid


def cgroup_v2_path(pid: int) -> str:
    """The process's cgroup v2 path ("/a/b"), "" when it has none (a cgroup v1 host)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


def _cgroup(pid: int, mount: str | None) -> tuple[int, str]:
    """The cgroup v2 id and leaf name; on a cgroup v1 host the memory controller's leaf."""
    v2 = v1 = ""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    cgroup_id = 0
    if mount and v2:
        try:
            cgroup_id = os.stat(mount + v2).st_ino
        except OSError:
            pass
    leaf = os.path.basename(v2.rstrip("/")) if v2 not in ("", "/") else os.path.basename(v1.rstrip("/"))
    return cgroup_id, leaf


def snapshot(pid: int, clock: BootClock, cgroup_mount: str | None) -> ProcessEvent | None:
    """One running process as an 'adopt' event; None if it changed or vanished meanwhile."""
    comm, ppid, ticks = read_stat(pid)
    proc = psutil.Process(pid)
    with proc.oneshot():
        uids, gids = proc.uids(), proc.gids()
        argv = tuple(proc.cmdline())
        try:
            exe = proc.exe() or None
        except (psutil.AccessDenied, psutil.ZombieProcess):
            exe = None
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    otel_env = parse_otel_env(environ)
    del environ  # only the allowlisted variables are kept
    vpid = _nspid(pid)
    pidns = os.stat(f"/proc/{pid}/ns/pid").st_ino
    cgroup_id, cgroup = _cgroup(pid, cgroup_mount)
    if read_stat(pid)[2] != ticks:
        return None  # the pid now names another process
    start_time = clock.to_wall(ticks * NS_PER_TICK)
    return ProcessEvent(
        kind=EventKind.ADOPT,
        time=clock.to_wall(clock.boot_now()),
        pid=pid,
        ppid=ppid,
        vpid=vpid,
        pidns=pidns,
        tid=pid,
        uid=uids.real,
        gid=gids.real,
        comm=comm,
        exe=exe,
        argv=argv,
        start_time=start_time,
        start_ticks=ticks,
        exit_code=None,
        signal=None,
        core_dumped=False,
        cgroup_id=cgroup_id,
        cgroup=cgroup,
        truncated=(),
        untracked=False,
        otel_env=otel_env,
    )


def in_cgroup(pid: int, scope: str) -> bool:
    """Whether a process's cgroup v2 path is `scope` (a path below the cgroup2 mount) or under it."""
    path = cgroup_v2_path(pid)
    return path == scope or path.startswith(scope.rstrip("/") + "/")


def snapshot_or_none(pid: int, clock: BootClock, cgroup_mount: str | None, stats: AdoptionStats) -> ProcessEvent | None:
    """snapshot(), with a process that vanished or cannot be read counted and skipped."""
    try:
        event = snapshot(pid, clock, cgroup_mount)
    except (FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess, psutil.ZombieProcess):
        stats.vanished += 1
        return None
    except (PermissionError, psutil.AccessDenied):
        stats.unreadable += 1
        return None
    if event is None:
        stats.vanished += 1
    return event


def running(
    rules: tuple[MatchRule, ...],
    trace_all: bool,
    clock: BootClock,
    cgroup_mount: str | None,
    stats: AdoptionStats,
    scope_cgroup: str | None = None,
) -> Iterator[ProcessEvent]:
    """What the kernel side would track had it run all along: matching processes and their
    descendants (inside scope_cgroup, a path below the cgroup2 mount, when given), parents
    before children (by start time), otelproc itself left out."""
    me = os.getpid()
    table: dict[int, tuple[str, int, int]] = {}
    for pid in psutil.pids():
        try:
            table[pid] = read_stat(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone before it was looked at: nothing to adopt
    chosen: dict[int, bool] = {}

    def tracked(pid: int) -> bool:
        chain: list[int] = []
        while pid in table and pid not in chosen and pid not in chain:
            chain.append(pid)
            pid = table[pid][1]
        verdict = chosen.get(pid, False)
        for link in reversed(chain):  # from the oldest ancestor down
            verdict = verdict or trace_all or any_match(rules, table[link][0])
            chosen[link] = verdict
        return verdict

    found = sorted((table[pid][2], pid) for pid in table if pid != me and tracked(pid))
    for _ticks, pid in found:
        try:
            if scope_cgroup is not None and not in_cgroup(pid, scope_cgroup):
                continue
        except OSError:
            stats.vanished += 1
            continue
        event = snapshot_or_none(pid, clock, cgroup_mount, stats)
        if event is not None:
            yield event
