"""Processes already running when otelproc starts, read from /proc, as 'adopt' events.

A process can exit, or its pid be reused, while it is being read: every read
is of one pid, checked against the start time read first, and a process that
vanished or changed is skipped (and counted).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator

from otelproc import procfs
from otelproc.clock import BootClock
from otelproc.model import NS_PER_TICK, ProcessEvent, parse_otel_env
from otelproc.matching import MatchRule, starts_tracked
from otelproc.model import EventKind


@dataclass
class AdoptionStats:
    vanished: int = 0  # exited, or pid reused, while being read
    unreadable: int = 0  # permission denied: a capability is missing


def alive(pid: int, start_ticks: int) -> bool:
    """Still the same process (zombies count: their exit has not been reaped)."""
    try:
        return procfs.stat(pid).start_ticks == start_ticks
    except OSError:
        return False


def running_now(pid: int, start_ticks: int) -> bool:
    """The same process, and not yet exited (a zombie's exit record has been written)."""
    try:
        stat = procfs.stat(pid)
    except OSError:
        return False
    return stat.start_ticks == start_ticks and stat.state not in ("Z", "X")


def _nspid(status: dict[str, str], pid: int) -> int:
    """The pid in the process's own (innermost) pid namespace."""
    nspid = status.get("NSpid", "").split()
    return int(nspid[-1]) if nspid else pid


def _ids(status: dict[str, str], key: str) -> int:
    """The real uid or gid ("Uid:\treal\teffective\tsaved\tfs")."""
    return int(status[key].split()[0])


def cgroup_v2_path(pid: int) -> str:
    """The process's cgroup v2 path ("/a/b"), "" when it has none (a cgroup v1 host)."""
    for hierarchy, controllers, path in procfs.cgroups(pid):
        if hierarchy == "0" and not controllers:
            return path
    return ""


def _cgroup(pid: int, mount: str | None) -> tuple[int, str]:
    """The cgroup v2 id and leaf name; on a cgroup v1 host the memory controller's leaf."""
    v2 = v1 = ""
    for hierarchy, controllers, path in procfs.cgroups(pid):
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
    comm, ppid, ticks, _state = procfs.stat(pid)
    status = procfs.status(pid)
    argv = procfs.cmdline(pid)
    exe = procfs.exe(pid)
    otel_env = parse_otel_env(procfs.environ(pid))  # only the allowlisted variables are kept
    pidns = procfs.pidns(pid)
    cgroup_id, cgroup = _cgroup(pid, cgroup_mount)
    if procfs.stat(pid).start_ticks != ticks:
        return None  # the pid now names another process
    start_time = clock.to_wall(ticks * NS_PER_TICK)
    return ProcessEvent(
        kind=EventKind.ADOPT,
        time=clock.to_wall(clock.boot_now()),
        pid=pid,
        ppid=ppid,
        vpid=_nspid(status, pid),
        pidns=pidns,
        tid=pid,
        uid=_ids(status, "Uid"),
        gid=_ids(status, "Gid"),
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
    except (FileNotFoundError, ProcessLookupError):
        stats.vanished += 1
        return None
    except PermissionError:
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
    skip: Callable[[int, int], bool] = lambda pid, start_ticks: False,
) -> Iterator[ProcessEvent]:
    """What the kernel side would track had it run all along: matching processes and their
    descendants (inside scope_cgroup, a path below the cgroup2 mount, when given), parents
    before children (by start time), otelproc itself and those `skip` names left out."""
    me = os.getpid()
    table: dict[int, procfs.Stat] = {}
    for pid in procfs.pids():
        try:
            table[pid] = procfs.stat(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone before it was looked at: nothing to adopt
    chosen: dict[int, bool] = {}

    def tracked(pid: int) -> bool:
        chain: list[int] = []
        while pid in table and pid not in chosen and pid not in chain:
            chain.append(pid)
            pid = table[pid].ppid
        verdict = chosen.get(pid, False)
        for link in reversed(chain):  # from the oldest ancestor down
            verdict = verdict or starts_tracked(link, rules, trace_all)
            chosen[link] = verdict
        return verdict

    found = sorted((table[pid].start_ticks, pid) for pid in table if pid != me and tracked(pid))
    for ticks, pid in found:
        if skip(pid, ticks):
            continue
        try:
            if scope_cgroup is not None and not in_cgroup(pid, scope_cgroup):
                continue
        except OSError:
            stats.vanished += 1
            continue
        event = snapshot_or_none(pid, clock, cgroup_mount, stats)
        if event is not None:
            yield event


class Scanner:
    """/proc read as the kernel side tracks, for adoption at start and for the sweeps: the settings
    that decide what is read, and what vanished or could not be read (stats)."""

    def __init__(
        self,
        rules: tuple[MatchRule, ...],
        trace_all: bool,
        clock: BootClock,
        cgroup_mount: str | None,
        scope_cgroup: str | None,
    ) -> None:
        self.rules = rules
        self.trace_all = trace_all
        self.clock = clock
        self.cgroup_mount = cgroup_mount
        self.scope_cgroup = scope_cgroup  # --scope cgroup=PATH: a directory of the cgroup2 mount
        self.stats = AdoptionStats()

    def running(self, skip: Callable[[int, int], bool]) -> Iterator[ProcessEvent]:
        """The processes /proc shows that the kernel side would track, as 'adopt' events; see running()."""
        scope = None
        if self.scope_cgroup is not None and self.cgroup_mount:
            relative = os.path.relpath(os.path.realpath(self.scope_cgroup), self.cgroup_mount)
            scope = "/" if relative == "." else "/" + relative
        return running(self.rules, self.trace_all, self.clock, self.cgroup_mount, self.stats, scope, skip)

    def snapshot(self, pid: int) -> ProcessEvent | None:
        return snapshot_or_none(pid, self.clock, self.cgroup_mount, self.stats)
