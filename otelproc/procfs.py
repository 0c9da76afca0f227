"""/proc, read as bytes and decoded once, the way the kernel's records are (model.text).

A traced process chooses its own name, arguments and environment: none of it
is guaranteed UTF-8 (a comm cut at 15 bytes can end inside a character). Every
/proc read of otelproc (adoption, the sweep, the app-side helper) goes through
here, so no such byte can raise, and the same bytes give the same text whether
they came from the kernel's record or from /proc.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from otelproc.model import split_argv, text


class Stat(NamedTuple):
    comm: str
    ppid: int
    start_ticks: int  # field 22: with the pid, names the process
    state: str  # R, S, D, ...; Z: exited, not yet reaped


def _read(pid: int, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read()


def pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def stat(pid: int) -> Stat:
    """comm, ppid, start ticks and state from /proc/<pid>/stat (comm may hold spaces and parentheses)."""
    raw = _read(pid, "stat")
    head, _, tail = raw.rpartition(b")")
    fields = tail.split()
    return Stat(text(head.split(b"(", 1)[1]), int(fields[1]), int(fields[19]), text(fields[0]))


def status(pid: int) -> dict[str, str]:
    """The "Key:\\tvalue" lines of /proc/<pid>/status."""
    fields = {}
    for line in _read(pid, "status").splitlines():
        key, _, value = line.partition(b":")
        fields[text(key)] = text(value.strip())
    return fields


def cmdline(pid: int) -> tuple[str, ...]:
    return split_argv(_read(pid, "cmdline"))


_DELETED = " (deleted)"  # readlink's suffix for a file replaced since it was loaded (an upgraded interpreter)


def exe(pid: int) -> str | None:
    """The loaded executable's path, as the kernel recorded it at exec; None for a kernel thread or a zombie."""
    try:
        return text(os.readlink(f"/proc/{pid}/exe".encode())).removesuffix(_DELETED)
    except (FileNotFoundError, PermissionError):
        return None


def environ(pid: int) -> bytes:
    return _read(pid, "environ")


def cgroups(pid: int) -> list[tuple[str, str, str]]:
    """(hierarchy id, controllers, path) for each line of /proc/<pid>/cgroup."""
    lines = []
    for line in text(_read(pid, "cgroup")).splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        lines.append((hierarchy, controllers, path))
    return lines


_CONTAINER_ID = re.compile(r"(?:[a-z-]+-)?([0-9a-f]{64})(?:\.scope)?")


def container_id(cgroup_leaf: str) -> str | None:
    """docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope, or a bare id."""
    match = _CONTAINER_ID.fullmatch(cgroup_leaf)
    return match.group(1) if match else None


def own_container_id() -> str | None:
    """This process's container, from the leaf of its cgroup v2 path ("0::" line): the cgroup the kernel
    side names (the sidecar's container.id of the same process comes from the same leaf)."""
    try:
        paths = [path for hierarchy, _, path in cgroups(os.getpid()) if hierarchy == "0"]
    except (OSError, ValueError):
        return None
    return container_id(paths[0].rsplit("/", 1)[-1]) if paths else None


def pidns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/pid").st_ino
