"""A caller of a traced service, as a client with a trace of its own would call it, and the worker that is
serving its request right now (to kill it there)."""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path
from typing import Iterable

import httpx
import psutil

from support.jaeger import wait_for


class Caller:
    """A request on a thread of its own, with a traceparent of the test's: its trace id is the one to find."""

    def __init__(self, base_url: str, path: str) -> None:
        self.path = path
        self.trace_id = secrets.token_hex(16)
        self.parent_id = secrets.token_hex(8)
        self.status: int | str | None = None
        headers = {"traceparent": f"00-{self.trace_id}-{self.parent_id}-01"}

        def call() -> None:
            try:
                self.status = httpx.get(f"{base_url}/{path}", headers=headers, timeout=150).status_code
            except httpx.HTTPError as exc:
                self.status = type(exc).__name__

        self.thread = threading.Thread(target=call, daemon=True)
        self.thread.start()


def in_container(pid: int, container_id: str) -> bool:
    try:
        return container_id in Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False


def established_on(pid: int, port: int) -> set[int]:
    """Socket inodes of TCP connections accepted on local `port`, ESTABLISHED, in the network namespace of
    process pid (/proc/<pid>/net is that namespace's view; psutil reads the caller's)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01":
                inodes.add(inode)
    return inodes


def sockets_of(pid: int) -> set[int]:
    found = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                found.add(int(target[8:-1]))
    except OSError:
        pass
    return found


def serving(pids: Iterable[int], port: int) -> int | None:
    """The one of pids that holds an established connection accepted on `port`: the one serving the request
    in flight. None while none does, or more than one (an earlier request's connection, not yet closed)."""
    holders = [pid for pid in pids if sockets_of(pid) & established_on(pid, port)]
    return holders[0] if len(holders) == 1 else None


def serving_worker(container_id: str, port: int, timeout: float = 30) -> psutil.Process:
    """The process of the container (by its full id, in its cgroup's path) holding a connection accepted
    on `port`: the worker serving the one request in flight."""

    def holder() -> psutil.Process | None:
        pid = serving((p.pid for p in psutil.process_iter() if in_container(p.pid, container_id)), port)
        return psutil.Process(pid) if pid is not None else None

    return wait_for(holder, f"a process of container {container_id[:12]} serving a request on port {port}", timeout)


def pid_inside(process: psutil.Process) -> int:
    """Its pid in its own (innermost) pid namespace: what a process span in that namespace names."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError(f"no NSpid for {process.pid}")
