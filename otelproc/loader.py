"""Loads the compiled BPF object, configures it, attaches it and polls its ring buffer.

Nothing here needs a compiler or kernel headers: the object ships in the
package and libbpf relocates it against the running kernel's BTF at load time.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from otelproc import decoder, libbpf, record
from otelproc.libbpf import LibbpfError
from otelproc.matching import MatchRule
from otelproc.record import DEFAULT_OBJECT

DEFAULT_RING_BUFFER_BYTES = 16 << 20
DEFAULT_MAX_TRACKED = 65536

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class OptionalProgram:
    """A program that only adds detail: left out where the running kernel lacks its tracepoint."""

    name: str
    tracepoint: str
    first_arg_kind: int | None  # BTF kind its first argument must have, where kernels changed it
    gives: str  # what spans lack without it

    def warning(self) -> str:
        return f"this kernel has no usable tracepoint {self.tracepoint}: spans will not say {self.gives}"

    def available(self) -> bool:
        kinds = libbpf.tracepoint_arg_kinds(self.tracepoint)
        if kinds is None:
            return False
        return self.first_arg_kind is None or (bool(kinds) and kinds[0] == self.first_arg_kind)


OPTIONAL_PROGRAMS = (
    OptionalProgram("handle_signal", "signal_generate", None, "who sent the signal that ended a process"),
    # Older kernels have mark_victim(int pid); 6.x kernels mark_victim(struct task_struct *task, uid_t uid).
    OptionalProgram("handle_oom_victim", "mark_victim", libbpf.BTF_KIND_PTR, "which processes the OOM killer ended"),
)


def match_key(rule: MatchRule) -> bytes:
    """The rule as a key of the kernel's match_exe_names LPM trie."""
    raw = rule.name.encode()
    if not rule.prefix:
        raw += b"\0"  # the terminator keeps "python" from matching "python3"
    return record.EXE_NAME_KEY.pack(len(raw) * 8, raw)


@dataclass(frozen=True)
class ProbeConfig:
    match: tuple[MatchRule, ...] = ()
    trace_all: bool = False
    scope_pidns: int = 0  # inode of the pid namespace whose members count and whose pids we use; 0 = host
    scope_cgroup: str | None = None  # a cgroup v2 directory: only processes started under it
    ring_buffer_bytes: int = DEFAULT_RING_BUFFER_BYTES
    max_tracked: int = DEFAULT_MAX_TRACKED
    wakeup_bytes: int = 0  # wake the reader only past this many unread bytes (it must poll on a timer); 0: always
    object_path: Path = DEFAULT_OBJECT


class Probe:
    """The attached BPF programs and their ring buffer. A context manager; close() detaches."""

    def __init__(self, config: ProbeConfig, on_record: Callable[[bytes], None]) -> None:
        self.config = config
        self._obj: libbpf.BpfObject | None = None
        self._ring: libbpf.RingBuffer | None = None
        self._cgroup_fd: int | None = None
        self.layout: record.EventLayout  # struct event of this object, for decoding its records
        self.left_out: list[OptionalProgram] = []  # what this kernel cannot give
        try:
            self._obj = self._open()
            self._obj.load()
            self._fill_maps(self._obj)
            self._obj.attach_all()
            self._ring = libbpf.RingBuffer(self._obj.map_fd("events"), on_record)
        except BaseException:
            self.close()
            raise

    def _open(self) -> libbpf.BpfObject:
        path = self.config.object_path
        if not path.is_file():
            raise LibbpfError(errno.ENOENT, f"BPF object {path} is missing; build it with `make bpf`")
        obj = libbpf.BpfObject(str(path))
        try:
            self.layout = record.EventLayout.from_btf(obj.btf)
            decoder.check_layout(self.layout)
            obj.set_globals(
                ".rodata",
                {
                    "trace_all": self.config.trace_all,
                    "scope_pidns": self.config.scope_pidns,
                    "scope_cgroup": self.config.scope_cgroup is not None,
                    "ns_per_tick": 1_000_000_000 // os.sysconf("SC_CLK_TCK"),
                    "wakeup_bytes": self.config.wakeup_bytes,
                },
            )
            obj.set_max_entries("events", self.config.ring_buffer_bytes)
            obj.set_max_entries("tracked", self.config.max_tracked)
            for program in OPTIONAL_PROGRAMS:
                if not program.available():
                    obj.leave_out(program.name)
                    self.left_out.append(program)
        except BaseException:
            obj.close()
            raise
        return obj

    def _fill_maps(self, obj: libbpf.BpfObject) -> None:
        for rule in self.config.match:
            obj.update("match_exe_names", match_key(rule), b"\1")
        if self.config.scope_cgroup is not None:
            try:
                self._cgroup_fd = os.open(self.config.scope_cgroup, os.O_RDONLY | os.O_DIRECTORY)
                obj.update("scope_cgroups", _U32.pack(0), _U32.pack(self._cgroup_fd))
            except OSError as exc:
                raise LibbpfError(
                    exc.errno, f"--scope cgroup={self.config.scope_cgroup}: not a cgroup v2 directory ({exc.strerror})"
                ) from None

    def _object(self) -> libbpf.BpfObject:
        if self._obj is None:
            raise LibbpfError(errno.EBADF, "the probe is closed")
        return self._obj

    def poll(self, timeout_ms: int) -> int:
        """Hands every waiting record to on_record; waits up to timeout_ms for the first."""
        if self._ring is None:
            raise LibbpfError(errno.EBADF, "the probe is closed")
        return self._ring.poll(timeout_ms)

    def lost(self) -> dict[str, int]:
        """Records and processes the kernel side had to drop, by reason, summed over CPUs."""
        obj = self._object()
        return {
            name: sum(_U64.unpack(v)[0] for v in obj.lookup_percpu("lost", _U32.pack(index), 8))
            for index, name in record.LOST_NAMES.items()
        }

    def ring_used(self) -> int:
        """Bytes written to the ring buffer and not yet consumed (its two position pages)."""
        fd = self._object().map_fd("events")
        page = mmap.PAGESIZE
        with mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=0) as consumer, \
                mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=page) as producer:
            return _U64.unpack_from(producer)[0] - _U64.unpack_from(consumer)[0]

    def track(self, pid: int, start_ticks: int) -> bool:
        """Reports fork and exit of a process that was found, not seen to exec (adoption)."""
        try:
            self._object().update("tracked", _U32.pack(pid), _U64.pack(start_ticks))
        except LibbpfError:
            return False
        return True

    def untrack(self, pid: int) -> None:
        self._object().delete("tracked", _U32.pack(pid))

    def tracked(self) -> dict[int, int]:
        """pid -> start ticks of every process the kernel side tracks now."""
        return {
            _U32.unpack(k)[0]: _U64.unpack(v)[0] for k, v in self._object().items("tracked", _U32.size, _U64.size)
        }

    def close(self) -> None:
        """Detaches every program and frees everything; safe to call twice."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None
        if self._cgroup_fd is not None:
            os.close(self._cgroup_fd)
            self._cgroup_fd = None

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
