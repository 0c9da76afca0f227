"""The state file: the live processes of one otelproc, for the next one to carry on with.

Written atomically (mode 0600) at most a second after the table changes, and
at SIGTERM; while nothing changes its mtime is refreshed every second, so it
also says when otelproc last knew its processes alive. The next otelproc of
the same boot, host and tracking configuration carries on with the processes
still running (same span identity and start, no second 'started' span) and
ends the spans of those that exited in between. Command lines are stored as
the spans would show them (redacted); the only environment kept is the allowlist.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from opentelemetry.trace import SpanContext, TraceFlags, TraceState

from otelproc.model import OomKill, SignalSent
from otelproc.identity import ProcessIdentity, SpanPlace, boot_id
from otelproc.redact import redacted
from otelproc.sidecar.tracker import Exec, TrackedProcess

# The format this otelproc writes, and those it reads, so that a restart across an upgrade carries on.
# How the older ones differ: version 2 calls started_span_sent "announced"; in versions 2 and 3 a 'started'
# span is the lifetime span's child (from_dict marks it legacy_started) and no depth is kept; before version 5
# a place has no root or link (no bound: every tracked child was in its parent's trace).
VERSION = 5
READABLE_VERSIONS = (2, 3, 4, VERSION)
SAMPLED = TraceFlags(TraceFlags.SAMPLED)  # as every process span is


def _place_to_dict(place: SpanPlace) -> dict[str, Any]:
    return {
        "trace_id": f"{place.trace_id:032x}",
        "span_id": f"{place.span_id:016x}",
        "parent_span_id": None if place.parent_span_id is None else f"{place.parent_span_id:016x}",
        "trace_state": place.trace_state.to_header() if place.trace_state else None,
        "remote_parent": place.remote_parent,
        "root": list(place.root),
        "linked": None if place.linked is None else [f"{place.linked.trace_id:032x}", f"{place.linked.span_id:016x}"],
    }


def _place_from_dict(d: dict[str, Any], itself: tuple[int, int]) -> SpanPlace:
    linked = d.get("linked")
    return SpanPlace(
        trace_id=int(d["trace_id"], 16),
        span_id=int(d["span_id"], 16),
        parent_span_id=None if d["parent_span_id"] is None else int(d["parent_span_id"], 16),
        root=tuple(d["root"]) if "root" in d else itself,  # type: ignore[arg-type]
        trace_state=TraceState.from_header([d["trace_state"]]) if d["trace_state"] else None,
        remote_parent=d["remote_parent"],
        linked=None if linked is None else SpanContext(int(linked[0], 16), int(linked[1], 16), False, SAMPLED),
    )


def _roots_of_older_versions(processes: list[TrackedProcess]) -> None:
    """A file older than version 5 kept no roots: a process under its tracked parent's span shares the
    parent's root, as the process itself computes it from /proc; any other is its own."""
    by_key = {p.key: p for p in processes}
    for process in processes:
        top, seen = process, {process.key}  # (a damaged file's cycle of parents must not hang the start)
        while (parent := by_key.get(top.parent_key) if top.parent_key else None) is not None and (
            top.span_place.parent_span_id == parent.span_place.span_id and parent.key not in seen
        ):
            top = parent
            seen.add(top.key)
        process.span_place = dataclasses.replace(process.span_place, root=top.span_place.root)


def to_dict(p: TrackedProcess, redact: bool) -> dict[str, Any]:
    def argv(value: tuple[str, ...] | None) -> list[str] | None:
        if value is None:
            return None
        return list(redacted(value) if redact else value)

    return {
        "pid": p.pid,
        "start_ticks": p.identity.start_ticks,
        "pidns": p.pidns,
        "vpid": p.vpid,
        "ppid": p.ppid,
        "origin": p.origin,
        "start_time": p.start_time,
        "creation_time": p.creation_time,
        "uid": p.uid,
        "gid": p.gid,
        "comm": p.comm,
        "exe": p.exe,
        "argv": argv(p.argv),
        "cgroup_id": p.cgroup_id,
        "cgroup": p.cgroup,
        "otel_env": p.otel_env,
        "truncated": sorted(p.truncated),
        "link": _place_to_dict(p.span_place),
        "parent": list(p.parent_key) if p.parent_key else None,
        "linked_parent": p.linked_parent,
        "parent_program": p.parent_program,
        "started_span_sent": p.started_span_sent,
        "legacy_started": p.legacy_started,
        "depth": p.depth,
        "execs": [{"time": e.time, "exe": e.exe, "argv": argv(e.argv)} for e in p.execs],
        "execs_dropped": p.execs_dropped,
        "owner": p.owner,
        "signals": [list(sent) for sent in p.signals],
        "signals_dropped": p.signals_dropped,
        "oom": list(p.oom) if p.oom else None,
    }


def from_dict(d: dict[str, Any], version: int = VERSION) -> TrackedProcess:
    return TrackedProcess(
        identity=ProcessIdentity(boot_id(), d["pidns"], d["vpid"], d["start_ticks"]),
        origin=d["origin"],
        start_time=d["start_time"],
        creation_time=d["creation_time"],
        pid=d["pid"],
        ppid=d["ppid"],
        vpid=d["vpid"],
        pidns=d["pidns"],
        uid=d["uid"],
        gid=d["gid"],
        comm=d["comm"],
        exe=d["exe"],
        argv=None if d["argv"] is None else tuple(d["argv"]),
        cgroup_id=d["cgroup_id"],
        cgroup=d["cgroup"],
        otel_env=dict(d["otel_env"]),
        truncated=set(d["truncated"]),
        span_place=_place_from_dict(d["link"], (d["vpid"], d["start_ticks"])),
        parent_key=tuple(d["parent"]) if d["parent"] else None,
        linked_parent=d.get("linked_parent"),
        parent_program=d["parent_program"],
        started_span_sent=d["started_span_sent" if version >= 3 else "announced"],
        # A 'started' span sent under versions 2 and 3 is a child of the lifetime span: that one keeps its ids.
        legacy_started=d["legacy_started"] if version >= 4 else d["started_span_sent" if version >= 3 else "announced"],
        depth=d.get("depth", 0),
        execs=[Exec(e["time"], e["exe"], None if e["argv"] is None else tuple(e["argv"])) for e in d["execs"]],
        execs_dropped=d.get("execs_dropped", 0),
        owner=d.get("owner"),
        signals=[SignalSent(*sent) for sent in d.get("signals", ())],
        signals_dropped=d.get("signals_dropped", 0),
        oom=OomKill(*d["oom"]) if d.get("oom") else None,
    )


def host() -> str:
    return os.uname().nodename


@dataclass
class Saved:
    """What a state file holds, once it is known to be this boot's, host's and configuration's."""

    processes: list[TrackedProcess] = field(default_factory=list)
    last_alive: int = 0  # Unix ns: when the writer last knew these processes alive
    lost: dict[str, int] = field(default_factory=dict)  # the kernel side's loss counters then


def save(path: Path, processes: list[TrackedProcess], redact: bool, config: str, lost: dict[str, int]) -> None:
    """Replaces the file in one rename, so a reader never sees half of it. Written one process
    at a time: with tens of thousands, a whole document built first would be as many objects
    for the garbage collector to walk (while every thread waits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    head = json.dumps(
        {
            "version": VERSION,
            "boot_id": boot_id(),
            "host": host(),
            "config": config,
            "saved_at": time.time_ns(),
            "lost": lost,
        },
        separators=(",", ":"),
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(head[:-1] + ',"processes":[')
        for i, p in enumerate(processes):
            f.write(("," if i else "") + json.dumps(to_dict(p, redact), separators=(",", ":")))
        f.write("]}")
    os.replace(tmp, path)


def touch(path: Path) -> None:
    """Nothing changed, everything is still alive as of now: the mtime says so."""
    os.utime(path)


def load(path: Path, config: str) -> Saved:
    """What a previous otelproc of this boot, host and configuration recorded; nothing if there is no file.

    Raises StateFileError (its message one line) for a file that is unreadable, or not to be resumed.
    """
    try:
        text = path.read_text()
        mtime = path.stat().st_mtime_ns
        data = json.loads(text)
    except FileNotFoundError:
        return Saved()
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else exc  # the path is said already
        raise StateFileError(f"state file {path} is unreadable ({why}); move it away or pass another --state-file")
    if not isinstance(data, dict) or data.get("version") not in READABLE_VERSIONS:
        raise StateFileError(
            f"state file {path} is not an otelproc state file of version "
            f"{' or '.join(map(str, READABLE_VERSIONS))}; not resumed"
        )
    # pids and start times of another boot or host name other processes; another configuration tracked others.
    if data.get("boot_id") != boot_id():
        raise StateFileError(f"state file {path} is from another boot (boot id {data.get('boot_id')}); not resumed")
    if data.get("host") != host():
        raise StateFileError(f"state file {path} is from another host ({data.get('host')}); not resumed")
    if data.get("config") != config:
        raise StateFileError(
            f"state file {path} was written with other tracking settings ({data.get('config')}); not resumed"
        )
    try:
        processes = [from_dict(d, data["version"]) for d in data["processes"]]
        if data["version"] < 5:
            _roots_of_older_versions(processes)
        return Saved(processes, max(int(data["saved_at"]), mtime), {k: int(v) for k, v in data["lost"].items()})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateFileError(f"state file {path} is damaged ({exc!r}); move it away") from None


def remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class Writer:
    """Keeps the state file at most `every` seconds behind the table, on a thread of its own:
    the table can hold tens of thousands of processes, and writing it must not keep the ring
    buffer waiting. The ring-buffer thread sets `dirty` on every change; while nothing changes,
    the file's mtime is refreshed instead (it says when the processes were last known alive)."""

    def __init__(
        self,
        path: Path,
        table: Callable[[], list[TrackedProcess]],
        redact: bool,
        config: str,
        lost: Callable[[], dict[str, int]],
        failed: Callable[[str, BaseException], None],
        every: float = 1.0,
    ) -> None:
        self.path = path
        self.dirty = True
        self._table, self._redact, self._config, self._lost, self._failed = table, redact, config, lost, failed
        self._every = every
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otelproc-state", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.write()
            except Exception as exc:  # noqa: BLE001 -- the next second tries again
                self._failed("state_file", exc)

    def write(self, force: bool = False) -> None:
        """The table if it changed (or force), else a touch. Raises on failure."""
        with self._lock:
            if self.dirty or force or not self.path.exists():
                self.dirty = False  # before the copy: a change made during the write is written next time
                try:
                    save(self.path, self._table(), self._redact, self._config, self._lost())
                except BaseException:
                    self.dirty = True  # a touch would vouch for a stale file: the next second writes it
                    raise
            else:
                touch(self.path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class StateFileError(ValueError):
    """The state file exists but cannot be used; the message says what to do."""
