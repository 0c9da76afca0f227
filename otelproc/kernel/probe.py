"""Loads the compiled BPF object, configures it, attaches it and polls its ring buffer.

Nothing here needs a compiler or kernel headers: the object ships in the
package and libbpf relocates it against the running kernel's BTF at load time.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from otelproc.kernel import decoder, libbpf, pins, record
from otelproc.kernel.libbpf import LibbpfError
from otelproc.config import Settings, scope_pidns
from otelproc.errors import BrokenInstallError, ConfigError
from otelproc.matching import MatchRule
from otelproc.kernel.record import DEFAULT_OBJECT
from otelproc.model import NS_PER_TICK

DEFAULT_RING_BUFFER_BYTES = 16 << 20

# The probe's maps. Each name (programs' too) begins with otelproc, within the 15 characters the kernel
# keeps, so that `bpftool map show` says whose they are. A probe pinned by another version of otelproc
# may have its maps named as on the left of UNPREFIXED_MAPS: a takeover reads a map by what it is.
RING, TRACKED, LOST, READER = "otelproc_ring", "otelproc_track", "otelproc_lost", "otelproc_reader"
MATCH, SCOPE = "otelproc_match", "otelproc_scope"
UNPREFIXED_MAPS = {
    "events": RING,
    "tracked": TRACKED,
    "lost": LOST,
    "match_exe_names": MATCH,
    "scope_cgroups": SCOPE,
    "scratch": "otelproc_heap",
}
DEFAULT_MAX_TRACKED = 65536
DEFAULT_UNATTENDED_LIMIT_NS = 15 * 60 * 1_000_000_000

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

    def available(self, btf: int | None) -> bool:
        """Whether the kernel whose BTF this is has the tracepoint, with the argument this program reads."""
        kinds = libbpf.tracepoint_arg_kinds(btf, self.tracepoint) if btf is not None else None
        if kinds is None:
            return False
        return self.first_arg_kind is None or (bool(kinds) and kinds[0] == self.first_arg_kind)


OPTIONAL_PROGRAMS = (
    OptionalProgram("otelproc_signal", "signal_generate", None, "who sent the signal that ended a process"),
    # Older kernels have mark_victim(int pid); 6.x kernels mark_victim(struct task_struct *task, uid_t uid).
    OptionalProgram("otelproc_oom", "mark_victim", libbpf.BTF_KIND_PTR, "which processes the OOM killer ended"),
    OptionalProgram("otelproc_region", "task_rename", libbpf.BTF_KIND_PTR, "which requests a killed process took"),
)


def match_key(rule: MatchRule) -> bytes:
    """The rule as a key of the kernel's match list (an LPM trie)."""
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
    wakeup_bytes: int = 0  # wake the reader when this many bytes become unread (it must poll on a timer); 0: always
    object_path: Path = DEFAULT_OBJECT
    pin_dir: Path | None = None  # pin the probe here (a bpffs directory) so that it outlives this process
    # Unread for longer than this, the probe records no new lifetime (only counts it); 0: never. A map
    # entry, not fixed at load: a resumed probe takes the new value.
    unattended_limit_ns: int = DEFAULT_UNATTENDED_LIMIT_NS

    @classmethod
    def from_settings(cls, settings: Settings, pin_dir: Path | None = None) -> ProbeConfig:
        return cls(
            pin_dir=pin_dir,
            match=settings.match,
            trace_all=settings.trace_all,
            scope_pidns=scope_pidns(settings.scope),
            scope_cgroup=settings.scope.cgroup,
            ring_buffer_bytes=settings.ring_buffer_size,
            max_tracked=settings.max_processes,
            # The commands poll every POLL_MS; waking them per record would cost a context switch per event.
            wakeup_bytes=settings.ring_buffer_size // 8,
            unattended_limit_ns=round(settings.unattended_limit * 1e9),
        )

    def load_time_settings(self) -> dict[str, object]:
        """What is fixed when the object loads; the match list is a map, rewritten at any start."""
        return {
            "trace_all": self.trace_all,
            "scope_pidns": self.scope_pidns,
            "scope_cgroup": self.scope_cgroup,
            "ring_buffer_bytes": self.ring_buffer_bytes,
            "max_tracked": self.max_tracked,
            "wakeup_bytes": self.wakeup_bytes,
            "ns_per_tick": NS_PER_TICK,
        }


def boot_ns() -> int:
    """Now on the clock the probe stamps its records with (CLOCK_BOOTTIME)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _lost_counts(lost_fd: int) -> dict[str, int]:
    counts = {}
    for index, name in record.LOST_NAMES.items():
        try:
            values = libbpf.map_lookup_percpu(lost_fd, _U32.pack(index), 8, LOST)
        except LibbpfError as exc:
            if exc.errno != errno.ENOENT:
                raise
            continue  # a pinned probe of another version may count fewer reasons than this one
        counts[name] = sum(_U64.unpack(v)[0] for v in values)
    return counts


@dataclass(frozen=True)
class LastRead:
    """What a pinned probe's reader map said when this otelproc found it: when it was last read, and the
    limit past which it stopped recording new lifetimes (0: none)."""

    last_read_ns: int  # CLOCK_BOOTTIME
    limit_ns: int
    checked_ns: int  # CLOCK_BOOTTIME: when this otelproc read it

    @classmethod
    def read(cls, maps: dict[str, int]) -> LastRead | None:
        """None for a pinned probe without a reader map (another version's)."""
        if READER not in maps:
            return None
        raw = libbpf.map_lookup(maps[READER], _U32.pack(0), record.READER.size, READER)
        last_read_ns, limit_ns = record.READER.unpack(raw)
        return cls(last_read_ns, limit_ns, boot_ns())


def _tracked_items(tracked_fd: int) -> list[tuple[bytes, bytes]]:
    return libbpf.map_items(tracked_fd, _U32.size, _U64.size)


class _PinnedMaps:
    """Fds of the maps a pinned probe holds, opened from their pins."""

    def __init__(self, probe_dir: Path) -> None:
        self.fds: dict[str, int] = {}
        try:
            for path in probe_dir.iterdir():
                if path.name.startswith(pins.MAP_PREFIX):
                    name = path.name[len(pins.MAP_PREFIX) :]
                    self.fds[UNPREFIXED_MAPS.get(name, name)] = libbpf.obj_get(str(path))
        except BaseException:
            self.close()
            raise
        missing = {RING, TRACKED, LOST} - self.fds.keys()
        if missing:
            self.close()
            raise LibbpfError(errno.ENOENT, f"the probe pinned in {probe_dir} has no map {', '.join(sorted(missing))}")

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class PreviousProbe:
    """A pinned probe of another fingerprint (another version of otelproc's, or other settings).

    It keeps recording until the new probe is attached; then its programs are
    detached, its ring drained with its own record layout (read from its
    program's BTF in the kernel) and its pins removed.
    """

    def __init__(self, probe_dir: Path) -> None:
        self.dir = probe_dir
        self.btf: libbpf.KernelBtf | None = None
        self.layout: record.EventLayout  # its struct event, which may differ from this otelproc's
        self.last_read: LastRead | None = None
        self._maps = _PinnedMaps(probe_dir)
        try:
            ids = pins.prog_ids(probe_dir)
            btf_id = libbpf.prog_btf_id(ids[0]) if ids else 0
            if not btf_id:
                raise LibbpfError(
                    errno.EPROTO,
                    f"the probe pinned in {probe_dir} carries no BTF, so its records cannot be read; "
                    "remove it with `otelproc detach` (its unread records are lost)",
                )
            self.btf = libbpf.KernelBtf(btf_id)
            self.layout = self._readable_layout(self.btf.handle)
            self.last_read = LastRead.read(self._maps.fds)
        except BaseException:
            self.close()
            raise

    def _readable_layout(self, btf: int) -> record.EventLayout:
        """Its struct event, refused (with what to do) when this otelproc cannot read its records."""
        try:
            layout = record.EventLayout.from_btf(btf)
            why = decoder.missing_field(layout)
            why = None if why is None else f"its struct event has no field {why}"
        except (BrokenInstallError, LibbpfError) as exc:
            why = str(exc)
        if why is not None:
            raise LibbpfError(
                errno.EPROTO,
                f"the probe pinned in {self.dir} writes records this otelproc cannot read ({why}); "
                "remove it with `otelproc detach` (its unread records are lost)",
            )
        return layout

    def tracked(self) -> list[tuple[bytes, bytes]]:
        return _tracked_items(self._maps.fds[TRACKED])

    def lost(self) -> dict[str, int]:
        return _lost_counts(self._maps.fds[LOST])

    def retire(self, on_record: Callable[[bytes], None]) -> int:
        """Detaches its programs, hands every record left in its ring to on_record, unpins it; returns how many."""
        pins.unpin_links(self.dir)
        ring = libbpf.RingBuffer(self._maps.fds[RING], on_record)
        try:
            drained = ring.poll(0)
        finally:
            ring.close()
        pins.remove(self.dir)
        self.close()
        return drained

    def close(self) -> None:
        self._maps.close()
        if self.btf is not None:
            self.btf.close()
            self.btf = None


class Probe:
    """The attached BPF programs and their ring buffer. A context manager; close() detaches
    what is not pinned (a pinned probe stays attached until removed: see pins.py)."""

    def __init__(self, config: ProbeConfig, on_record: Callable[[bytes], None]) -> None:
        self.config = config
        self.resumed = False  # the probe a previous otelproc pinned, same fingerprint, still recording
        self.previous: PreviousProbe | None = None  # one of another fingerprint, to take over from
        self.pinned_at: Path | None = None  # this probe's pin directory
        self.attached_at = 0  # boot ns just before this probe's programs began attaching
        self.layout: record.EventLayout  # struct event of this object, for decoding its records
        self.left_out: list[OptionalProgram] = []  # what this kernel cannot give
        self.last_read: LastRead | None = None  # the resumed (or taken over) probe's reader map, as found
        self._obj: libbpf.BpfObject | None = None
        self._ring: libbpf.RingBuffer | None = None
        self._cgroup_fd: int | None = None
        self._pinned: _PinnedMaps | None = None
        self._pinned_links: list[int] = []  # fds of a resumed probe's links: it runs while we do, pinned or not
        self._maps: dict[str, int] = {}
        try:
            self._start(on_record)
        except BaseException:
            self.close()
            raise

    def _start(self, on_record: Callable[[bytes], None]) -> None:
        obj = self._open()
        pin_dir = self.config.pin_dir
        here = (
            None
            if pin_dir is None
            else pin_dir / pins.fingerprint(self.config.object_path.read_bytes(), self.config.load_time_settings())
        )
        if pin_dir is not None:
            for probe_dir in pins.probes(pin_dir):
                if probe_dir == here and pins.links(probe_dir):
                    self._pinned = _PinnedMaps(probe_dir)
                    for path in pins.links(probe_dir):
                        self._pinned_links.append(libbpf.obj_get(str(path)))
                    self.resumed = True
                elif probe_dir == here or self.previous is not None or not pins.links(probe_dir):
                    pins.remove(probe_dir)  # half pinned or half removed, or a third: nothing to carry on with
                else:
                    self.previous = PreviousProbe(probe_dir)
        if self._pinned is not None:  # resumed
            obj.close()
            self._maps = dict(self._pinned.fds)
            self.last_read = LastRead.read(self._maps)
            self._stamp_read()
            self._refill_match()
        else:
            self._obj = obj
            obj.load()
            self._maps = {name: obj.map_fd(name) for name in obj.map_names()}
            self._fill_maps()
            self._stamp_read()
            if self.previous is not None:
                self.last_read = self.previous.last_read
            self._carry_tracked()
            self.attached_at = boot_ns()
            obj.attach_all()
            self._carry_tracked()  # what the old probe began tracking while this one attached
            if here is not None:
                here.mkdir(mode=0o700, parents=True)
                try:
                    obj.pin(str(here), pins.LINK_PREFIX, pins.MAP_PREFIX)
                except BaseException:
                    pins.remove(here)
                    raise
        self.pinned_at = here
        self._ring = libbpf.RingBuffer(self._maps[RING], on_record)

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
                    "ns_per_tick": NS_PER_TICK,
                    "wakeup_bytes": self.config.wakeup_bytes,
                },
            )
            obj.set_max_entries(RING, self.config.ring_buffer_bytes)
            obj.set_max_entries(TRACKED, self.config.max_tracked)
            with libbpf.vmlinux_btf() as btf:
                for program in OPTIONAL_PROGRAMS:
                    if not program.available(btf):
                        obj.leave_out(program.name)
                        self.left_out.append(program)
        except BaseException:
            obj.close()
            raise
        return obj

    def _fill_maps(self) -> None:
        for rule in self.config.match:
            libbpf.map_update(self._maps[MATCH], match_key(rule), b"\1", MATCH)
        if self.config.scope_cgroup is not None:
            try:
                self._cgroup_fd = os.open(self.config.scope_cgroup, os.O_RDONLY | os.O_DIRECTORY)
                libbpf.map_update(self._maps[SCOPE], _U32.pack(0), _U32.pack(self._cgroup_fd), SCOPE)
            except LibbpfError:  # the kernel takes only a cgroup v2 directory into the map
                raise ConfigError(f"--scope cgroup={self.config.scope_cgroup}: not a cgroup v2 directory") from None
            except OSError as exc:
                raise ConfigError(f"--scope cgroup={self.config.scope_cgroup}: {exc.strerror}") from None

    def _refill_match(self) -> None:
        """A resumed probe matches what this otelproc was told, not what its predecessor was."""
        fd = self._maps[MATCH]
        wanted = {match_key(rule) for rule in self.config.match}
        for key, _ in libbpf.map_items(fd, record.EXE_NAME_KEY.size, 1):
            if key not in wanted:
                libbpf.map_delete(fd, key)
        for key in wanted:
            libbpf.map_update(fd, key, b"\1", MATCH)

    def _carry_tracked(self) -> None:
        """The old probe's tracked processes are this one's too: their forks and exits keep coming."""
        if self.previous is not None:
            for key, value in self.previous.tracked():
                try:
                    libbpf.map_update(self._maps[TRACKED], key, value, TRACKED, libbpf.BPF_NOEXIST)
                except LibbpfError:
                    pass  # there already (or the map is full: the sweep adopts what it finds)

    def _stamp_read(self) -> None:
        """Tells the kernel side that its ring is read now, and how long it may go unread."""
        libbpf.map_update(
            self._maps[READER], _U32.pack(0), record.READER.pack(boot_ns(), self.config.unattended_limit_ns), READER
        )

    def retire_previous(self, on_record: Callable[[bytes], None]) -> int:
        """Ends the takeover: the old probe's programs detached, its ring read, its pins gone."""
        previous, self.previous = self.previous, None
        return 0 if previous is None else previous.retire(on_record)

    def poll(self, timeout_ms: int) -> int:
        """Hands every waiting record to on_record; waits up to timeout_ms for the first."""
        if self._ring is None:
            raise LibbpfError(errno.EBADF, "the probe is closed")
        read = self._ring.poll(timeout_ms)
        self._stamp_read()
        return read

    def _fd(self, name: str) -> int:
        if self._ring is None:
            raise LibbpfError(errno.EBADF, "the probe is closed")
        return self._maps[name]

    def lost(self) -> dict[str, int]:
        """Records and processes the kernel side had to drop, by reason, summed over CPUs."""
        return _lost_counts(self._fd(LOST))

    def ring_used(self) -> int:
        """Bytes written to the ring buffer and not yet consumed (its two position pages)."""
        fd = self._fd(RING)
        page = mmap.PAGESIZE
        with (
            mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=0) as consumer,
            mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=page) as producer,
        ):
            return _U64.unpack_from(producer)[0] - _U64.unpack_from(consumer)[0]

    def track(self, pid: int, start_ticks: int) -> bool:
        """Reports fork and exit of a process that was found, not seen to exec (adoption)."""
        try:
            libbpf.map_update(self._fd(TRACKED), _U32.pack(pid), _U64.pack(start_ticks), TRACKED)
        except LibbpfError:
            return False
        return True

    def untrack(self, pid: int) -> None:
        libbpf.map_delete(self._fd(TRACKED), _U32.pack(pid))

    def tracked(self) -> dict[int, int]:
        """pid -> start ticks of every process the kernel side tracks now."""
        return {_U32.unpack(k)[0]: _U64.unpack(v)[0] for k, v in _tracked_items(self._fd(TRACKED))}

    def close(self) -> None:
        """Frees everything this process holds; a pinned probe keeps running in the kernel."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self.previous is not None:
            self.previous.close()
            self.previous = None
        if self._pinned is not None:
            self._pinned.close()
            self._pinned = None
        for fd in self._pinned_links:
            os.close(fd)
        self._pinned_links = []
        if self._obj is not None:
            self._obj.close()
            self._obj = None
        self._maps = {}
        if self._cgroup_fd is not None:
            os.close(self._cgroup_fd)
            self._cgroup_fd = None

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
