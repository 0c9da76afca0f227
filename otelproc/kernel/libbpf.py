"""The ctypes binding to libbpf.so.1: every ctypes declaration of otelproc lives here.

Only the calls the loader needs, wrapped so that a failure raises LibbpfError
carrying errno and libbpf's own last message.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator

from otelproc.errors import EXIT_KERNEL, OtelprocError

BTF_KIND_INT = 1
BTF_KIND_PTR = 2
BTF_KIND_STRUCT = 4
BTF_KIND_TYPEDEF = 8
BTF_KIND_DATASEC = 15
BTF_INT_SIGNED = 1

LIBBPF_INFO = 1  # libbpf's levels: 0 warn, 1 info, 2 debug

BPF_ANY = 0
BPF_NOEXIST = 1


class LibbpfError(OtelprocError, OSError):
    """A libbpf call failed (the kernel refused, or libbpf is missing); str() is one line that says which and why."""

    exit_code = EXIT_KERNEL

    def __str__(self) -> str:
        return str(self.strerror)


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size", ctypes.c_uint32)]


class _BtfMember(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32), ("offset", ctypes.c_uint32)]


class _BtfParam(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32)]


class _BtfVarSecinfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("offset", ctypes.c_uint32), ("size", ctypes.c_uint32)]


SampleFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_PrintFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

_P = ctypes.c_void_p
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "libbpf_set_print": (_P, [_PrintFn]),
    "libbpf_major_version": (ctypes.c_uint32, []),
    "libbpf_minor_version": (ctypes.c_uint32, []),
    "bpf_object__open_file": (_P, [ctypes.c_char_p, _P]),
    "bpf_object__load": (ctypes.c_int, [_P]),
    "bpf_object__close": (None, [_P]),
    "bpf_object__btf": (_P, [_P]),
    "bpf_object__find_map_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_object__next_program": (_P, [_P, _P]),
    "bpf_program__name": (ctypes.c_char_p, [_P]),
    "bpf_object__find_program_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_program__set_autoload": (ctypes.c_int, [_P, ctypes.c_bool]),
    "bpf_program__autoload": (ctypes.c_bool, [_P]),
    "btf__load_vmlinux_btf": (_P, []),
    "bpf_program__attach": (_P, [_P]),
    "bpf_link__destroy": (ctypes.c_int, [_P]),
    "bpf_map__set_max_entries": (ctypes.c_int, [_P, ctypes.c_uint32]),
    "bpf_map__initial_value": (_P, [_P, ctypes.POINTER(ctypes.c_size_t)]),
    "bpf_map__fd": (ctypes.c_int, [_P]),
    "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, _P, _P]),
    "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, _P, _P, ctypes.c_uint64]),
    "bpf_map_delete_elem": (ctypes.c_int, [ctypes.c_int, _P]),
    "bpf_map_get_next_key": (ctypes.c_int, [ctypes.c_int, _P, _P]),
    "btf__find_by_name_kind": (ctypes.c_int32, [_P, ctypes.c_char_p, ctypes.c_uint32]),
    "btf__type_by_id": (ctypes.POINTER(_BtfType), [_P, ctypes.c_uint32]),
    "btf__name_by_offset": (ctypes.c_char_p, [_P, ctypes.c_uint32]),
    "btf__resolve_type": (ctypes.c_int, [_P, ctypes.c_uint32]),
    "btf__resolve_size": (ctypes.c_int64, [_P, ctypes.c_uint32]),
    "ring_buffer__new": (_P, [ctypes.c_int, SampleFn, _P, _P]),
    "ring_buffer__poll": (ctypes.c_int, [_P, ctypes.c_int]),
    "ring_buffer__consume": (ctypes.c_int, [_P]),
    "ring_buffer__free": (None, [_P]),
    "libbpf_num_possible_cpus": (ctypes.c_int, []),
    "bpf_object__next_map": (_P, [_P, _P]),
    "bpf_map__name": (ctypes.c_char_p, [_P]),
    "bpf_map__pin": (ctypes.c_int, [_P, ctypes.c_char_p]),
    "bpf_link__pin": (ctypes.c_int, [_P, ctypes.c_char_p]),
    "bpf_obj_get": (ctypes.c_int, [ctypes.c_char_p]),
    "bpf_obj_get_info_by_fd": (ctypes.c_int, [ctypes.c_int, _P, ctypes.POINTER(ctypes.c_uint32)]),
    "bpf_prog_get_fd_by_id": (ctypes.c_int, [ctypes.c_uint32]),
    "btf__load_from_kernel_by_id": (_P, [ctypes.c_uint32]),
    "btf__free": (None, [_P]),
}

_lib: ctypes.CDLL | None = None
_messages: deque[str] = deque(maxlen=64)


@lru_cache(maxsize=1)
def _vsnprintf() -> Callable[..., int]:
    # By name: ctypes.util.find_library would run ldconfig, a process of its own.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fn = libc.vsnprintf
    fn.restype = ctypes.c_int
    # va_list reaches a callback as a pointer on x86-64 and arm64 alike.
    fn.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    return fn


def _keep_message(level: int, fmt: bytes, args: int) -> int:
    """libbpf's log goes to a ring of recent lines instead of stderr; errors quote it."""
    if level <= LIBBPF_INFO:
        buf = ctypes.create_string_buffer(1024)
        _vsnprintf()(buf, len(buf), fmt, args)
        for line in buf.value.decode(errors="replace").splitlines():
            if line.strip():
                _messages.append(line.strip())
    return 0


_PRINT_CALLBACK = _PrintFn(_keep_message)


def lib() -> ctypes.CDLL:
    """libbpf.so.1, loaded once, with argument types declared and its log captured."""
    global _lib
    if _lib is None:
        try:
            handle = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise LibbpfError(errno.ENOENT, f"libbpf.so.1 not found ({exc}); install libbpf1") from None
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(handle, name)
            fn.restype = restype
            fn.argtypes = argtypes
        handle.libbpf_set_print(_PRINT_CALLBACK)
        _lib = handle
    return _lib


def version() -> str:
    return f"{lib().libbpf_major_version()}.{lib().libbpf_minor_version()}"


def last_message() -> str:
    """The most telling line libbpf logged, for an error message."""
    for line in reversed(_messages):
        if "error" in line.lower() or "failed" in line.lower():
            return line
    return _messages[-1] if _messages else ""


def fail(what: str, err: int | None = None) -> LibbpfError:
    code = err if err is not None else ctypes.get_errno()
    code = abs(code) if code else errno.EIO
    detail = last_message()
    message = f"{what}: {os.strerror(code)}"
    if detail:
        message += f" (libbpf: {detail.removeprefix('libbpf: ')})"
    _messages.clear()
    return LibbpfError(code, message)


def check(rc: int, what: str) -> int:
    if rc < 0:
        raise fail(what, rc)
    return rc


@dataclass(frozen=True)
class Member:
    """One member of a struct as BTF describes it."""

    name: str  # a member of a nested struct: its path from the outer one, "usage.cpu_ns"
    offset: int  # bytes from the start of the (outer) struct
    size: int  # bytes
    kind: str  # "uint", "int" (signed), "bits" (a bitfield) or "bytes" (an array, anything else not an integer)


def _btf_struct(btf: int, name: str) -> ctypes._Pointer:
    api = lib()
    type_id = api.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_STRUCT)
    if type_id < 0:
        raise LibbpfError(errno.ENOENT, f"struct {name} is not in the object's BTF")
    return api.btf__type_by_id(btf, type_id)


def _members_of(btf: int, t: ctypes._Pointer, outer: str, path: str, base: int) -> list[Member]:
    api = lib()
    members = ctypes.cast(ctypes.addressof(t.contents) + ctypes.sizeof(_BtfType), ctypes.POINTER(_BtfMember))
    kind_flag = t.contents.info >> 31  # then the top 8 bits of a member's offset are a bitfield's size
    out = []
    for i in range(t.contents.info & 0xFFFF):
        member = members[i]
        name = api.btf__name_by_offset(btf, member.name_off).decode()
        full = f"{path}{name}"
        bits = member.offset & 0xFFFFFF if kind_flag else member.offset
        resolved = api.btf__resolve_type(btf, member.type)
        size = api.btf__resolve_size(btf, member.type)
        if resolved < 0 or size < 0:
            raise LibbpfError(errno.EPROTO, f"struct {outer}: member {full or i} has a type BTF cannot size")
        mtype = api.btf__type_by_id(btf, resolved)
        kind = (mtype.contents.info >> 24) & 0x1F
        encoding = "bytes"
        if kind == BTF_KIND_INT:
            int_info = ctypes.c_uint32.from_address(ctypes.addressof(mtype.contents) + ctypes.sizeof(_BtfType)).value
            encoding = "int" if (int_info >> 24) & BTF_INT_SIGNED else "uint"
            if bits % 8 or (kind_flag and member.offset >> 24) or (int_info & 0xFF) != size * 8:
                encoding = "bits"  # a bitfield: offset and size are those of the bytes that hold it
        if kind == BTF_KIND_STRUCT:  # its members in its place; an anonymous struct adds nothing to the path
            out += _members_of(btf, mtype, outer, f"{full}." if name else path, base + bits // 8)
            continue
        out.append(Member(full, base + bits // 8, size, encoding))
    return out


def struct_members(btf: int, name: str) -> tuple[int, list[Member]]:
    """Size and members of `struct name` as the object's BTF records them (typedefs resolved).

    A member that is itself a struct gives its own members instead, in its place, named by their
    path ("usage.cpu_ns") and at their offset from the start of `struct name`: the leaves, in order.
    """
    t = _btf_struct(btf, name)
    return t.contents.size, _members_of(btf, t, name, "", 0)


@contextlib.contextmanager
def vmlinux_btf() -> Iterator[int | None]:
    """The running kernel's BTF (None without one), freed after use: it takes some 6 MB of memory."""
    btf = lib().btf__load_vmlinux_btf() or None
    try:
        yield btf
    finally:
        if btf is not None:
            lib().btf__free(btf)


def tracepoint_arg_kinds(btf: int, name: str) -> tuple[int, ...] | None:
    """BTF kinds (typedefs resolved) of a tracepoint's arguments in the kernel's BTF; None if it has none.

    Each tracepoint's BTF is the typedef btf_trace_<name>: a pointer to a function
    whose first parameter is the context, then the tracepoint's own arguments.
    """
    api = lib()
    type_id = api.btf__find_by_name_kind(btf, f"btf_trace_{name}".encode(), BTF_KIND_TYPEDEF)
    if type_id < 0:
        return None
    pointer = api.btf__type_by_id(btf, api.btf__resolve_type(btf, type_id)).contents
    proto = api.btf__type_by_id(btf, pointer.size).contents  # size is a union with the pointed-to type
    params = ctypes.cast(ctypes.addressof(proto) + ctypes.sizeof(_BtfType), ctypes.POINTER(_BtfParam))
    kinds = []
    for i in range(1, proto.info & 0xFFFF):
        resolved = api.btf__resolve_type(btf, params[i].type)
        kinds.append((api.btf__type_by_id(btf, resolved).contents.info >> 24) & 0x1F if resolved >= 0 else 0)
    return tuple(kinds)


def datasec_offsets(btf: int, section: str) -> dict[str, tuple[int, int]]:
    """Offset and size of each global variable in a data section such as .rodata."""
    api = lib()
    sec_id = api.btf__find_by_name_kind(btf, section.encode(), BTF_KIND_DATASEC)
    if sec_id < 0:
        raise LibbpfError(errno.ENOENT, f"section {section} is not in the object's BTF")
    t = api.btf__type_by_id(btf, sec_id)
    vlen = t.contents.info & 0xFFFF
    infos = ctypes.cast(ctypes.addressof(t.contents) + ctypes.sizeof(_BtfType), ctypes.POINTER(_BtfVarSecinfo))
    out = {}
    for i in range(vlen):
        var = api.btf__type_by_id(btf, infos[i].type)
        out[api.btf__name_by_offset(btf, var.contents.name_off).decode()] = (infos[i].offset, infos[i].size)
    return out


def _buffer(data: bytes) -> ctypes.Array:
    return ctypes.create_string_buffer(data, len(data))


def map_update(fd: int, key: bytes, value: bytes, what: str, flags: int = BPF_ANY) -> None:
    check(lib().bpf_map_update_elem(fd, _buffer(key), _buffer(value), flags), f"updating map {what}")


def map_delete(fd: int, key: bytes) -> bool:
    return lib().bpf_map_delete_elem(fd, _buffer(key)) == 0


def map_lookup(fd: int, key: bytes, value_size: int, what: str) -> bytes:
    out = ctypes.create_string_buffer(value_size)
    check(lib().bpf_map_lookup_elem(fd, _buffer(key), out), f"reading map {what}")
    return out.raw


def map_lookup_percpu(fd: int, key: bytes, value_size: int, what: str) -> list[bytes]:
    """One value per possible CPU, as a per-CPU map stores them (each padded to 8 bytes)."""
    api = lib()
    slot = (value_size + 7) // 8 * 8
    ncpu = api.libbpf_num_possible_cpus()
    out = ctypes.create_string_buffer(slot * ncpu)
    check(api.bpf_map_lookup_elem(fd, _buffer(key), out), f"reading map {what}")
    return [out.raw[i * slot : i * slot + value_size] for i in range(ncpu)]


def map_items(fd: int, key_size: int, value_size: int) -> list[tuple[bytes, bytes]]:
    api = lib()
    key, next_key = ctypes.create_string_buffer(key_size), ctypes.create_string_buffer(key_size)
    value = ctypes.create_string_buffer(value_size)
    out = []
    prev = None
    while api.bpf_map_get_next_key(fd, prev, next_key) == 0:
        ctypes.memmove(key, next_key, key_size)
        if api.bpf_map_lookup_elem(fd, key, value) == 0:
            out.append((key.raw, value.raw))
        prev = key
    return out


def obj_get(path: str) -> int:
    """A new fd for the map, program or link pinned at path."""
    fd = lib().bpf_obj_get(path.encode())
    if fd < 0:
        raise fail(f"opening pin {path}")
    return fd


def _info(fd: int, size: int, what: str) -> bytes:
    buf = ctypes.create_string_buffer(size)
    length = ctypes.c_uint32(size)
    check(lib().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(length)), f"reading info of {what}")
    return buf.raw


_BPF_LINK_INFO_PROG_ID = 8  # struct bpf_link_info { __u32 type; __u32 id; __u32 prog_id; ... }


def link_prog_id(link_fd: int) -> int:
    """The id of the program a link attaches."""
    return int.from_bytes(_info(link_fd, 64, "a link")[_BPF_LINK_INFO_PROG_ID:][:4], "little")


@lru_cache(maxsize=1)
def _prog_info_layout() -> tuple[int, dict[str, int]]:
    """struct bpf_prog_info as the running kernel defines it, from its own BTF."""
    with vmlinux_btf() as btf:
        if btf is None:
            raise fail("loading the kernel's BTF")
        size, members = struct_members(btf, "bpf_prog_info")
    return size, {m.name: m.offset for m in members}


def prog_btf_id(prog_id: int) -> int:
    """The id of the BTF a loaded program carries (its object's types, struct event among them); 0: none."""
    fd = lib().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        raise fail(f"opening program {prog_id}")
    try:
        size, offsets = _prog_info_layout()
        return int.from_bytes(_info(fd, size, f"program {prog_id}")[offsets["btf_id"] :][:4], "little")
    finally:
        os.close(fd)


def prog_exists(prog_id: int) -> bool:
    fd = lib().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return False
    os.close(fd)
    return True


class KernelBtf:
    """A BTF object the kernel holds (a loaded program's), loaded by id; close() frees it."""

    def __init__(self, btf_id: int) -> None:
        self.handle = lib().btf__load_from_kernel_by_id(btf_id)
        if not self.handle:
            raise fail(f"loading BTF {btf_id} from the kernel")

    def close(self) -> None:
        if self.handle:
            lib().btf__free(self.handle)
            self.handle = None


_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8


def mount_bpffs(path: str) -> None:
    """mount -t bpf bpf PATH (needs CAP_SYS_ADMIN in the mount namespace's owner)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.mount.restype = ctypes.c_int
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    if libc.mount(b"bpf", path.encode(), b"bpf", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


class BpfObject:
    """An opened (then loaded) BPF object: its maps, its programs, their links."""

    def __init__(self, path: str) -> None:
        self._api = lib()
        self._links: list[tuple[str, int]] = []  # (program name, link)
        self._obj = self._api.bpf_object__open_file(path.encode(), None)
        if not self._obj:
            raise fail(f"opening {path}")
        self.btf = self._api.bpf_object__btf(self._obj)

    def _map(self, name: str) -> int:
        m = self._api.bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise LibbpfError(errno.ENOENT, f"map {name} is not in the BPF object")
        return m

    def map_fd(self, name: str) -> int:
        return check(self._api.bpf_map__fd(self._map(name)), f"map {name}")

    def map_names(self) -> list[str]:
        """The object's own maps; libbpf's internal ones (.rodata and the like) left out."""
        names = []
        m = self._api.bpf_object__next_map(self._obj, None)
        while m:
            name = self._api.bpf_map__name(m).decode()
            if "." not in name:
                names.append(name)
            m = self._api.bpf_object__next_map(self._obj, m)
        return names

    def set_max_entries(self, name: str, entries: int) -> None:
        check(self._api.bpf_map__set_max_entries(self._map(name), entries), f"sizing map {name}")

    def set_globals(self, section: str, values: dict[str, int]) -> None:
        """Writes const volatile globals before load, so the verifier sees their values."""
        size = ctypes.c_size_t()
        base = self._api.bpf_map__initial_value(self._map(section), ctypes.byref(size))
        if not base:
            raise fail(f"reading {section} of the BPF object")
        layout = datasec_offsets(self.btf, section)
        for name, value in values.items():
            offset, width = layout[name]
            ctypes.memmove(base + offset, int(value).to_bytes(width, "little"), width)

    def load(self) -> None:
        check(self._api.bpf_object__load(self._obj), "loading the BPF object")

    def leave_out(self, program: str) -> None:
        """Neither loads nor attaches a program (call before load)."""
        prog = self._api.bpf_object__find_program_by_name(self._obj, program.encode())
        if not prog:
            raise LibbpfError(errno.ENOENT, f"program {program} is not in the BPF object")
        check(self._api.bpf_program__set_autoload(prog, False), f"leaving out {program}")

    def attach_all(self) -> None:
        """Attaches every program that was loaded (not left out)."""
        prog = self._api.bpf_object__next_program(self._obj, None)
        while prog:
            if self._api.bpf_program__autoload(prog):
                name = self._api.bpf_program__name(prog).decode()
                link = self._api.bpf_program__attach(prog)
                if not link:
                    raise fail(f"attaching {name}")
                self._links.append((name, link))
            prog = self._api.bpf_object__next_program(self._obj, prog)

    def pin(self, directory: str, link_prefix: str, map_prefix: str) -> None:
        """Pins every link and every map of the object under directory; they then outlive this process."""
        for name, link in self._links:
            check(self._api.bpf_link__pin(link, f"{directory}/{link_prefix}{name}".encode()), f"pinning link {name}")
        for name in self.map_names():
            check(
                self._api.bpf_map__pin(self._map(name), f"{directory}/{map_prefix}{name}".encode()),
                f"pinning map {name}",
            )

    def close(self) -> None:
        """Detaches every program not pinned and frees the object; safe to call twice."""
        for _, link in self._links:
            self._api.bpf_link__destroy(link)
        self._links.clear()
        if self._obj:
            self._api.bpf_object__close(self._obj)
            self._obj = None


class RingBuffer:
    """libbpf's ring-buffer consumer; each record reaches on_record as bytes."""

    def __init__(self, map_fd: int, on_record: Callable[[bytes], None]) -> None:
        self._api = lib()
        self._on_record = on_record
        self._error: BaseException | None = None
        self._callback = SampleFn(self._sample)
        self._ring = self._api.ring_buffer__new(map_fd, self._callback, None, None)
        if not self._ring:
            raise fail("creating the ring buffer consumer")

    def _sample(self, _ctx: int, data: int, size: int) -> int:
        try:
            self._on_record(ctypes.string_at(data, size))
        except BaseException as exc:  # noqa: BLE001 -- a ctypes callback cannot raise: poll() re-raises it
            self._error = exc
            return -1
        return 0

    def poll(self, timeout_ms: int) -> int:
        """Waits up to timeout_ms for a wake-up, then hands every waiting record to on_record."""
        n = self._api.ring_buffer__poll(self._ring, timeout_ms)
        self._raise_callback_error()
        if n < 0 and n != -errno.EINTR:
            raise fail("polling the ring buffer", n)
        # Records submitted without a wake-up are there too; take them now.
        m = self._api.ring_buffer__consume(self._ring)
        self._raise_callback_error()
        if m < 0:
            raise fail("reading the ring buffer", m)
        return max(n, 0) + m

    def _raise_callback_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        if self._ring:
            self._api.ring_buffer__free(self._ring)
            self._ring = None
