"""The ring-buffer record, read from the BPF object's BTF: bpf/otelproc.h is its one definition.

The layout of `struct event` (names, offsets, sizes) comes from the compiled
object, so a new kernel field is a change to the C header and to the code that
uses it, nothing in between. What Python cannot read from BTF (enum values and
#define bounds, which clang does not emit) is mirrored here, and
tests/unit/kernel/test_record.py checks the mirror against the C compiler.

struct event is a header and a part per kind of detail (usage, oom, signal),
each a struct of its own, then data[]. Python reads the record flattened: every
field by its own name, whichever part holds it (`r.pid` is `header.pid`,
`r.cpu_ns` is `usage.cpu_ns`, `r.total_vm` is `oom.total_vm`), so names are
unique across the parts (from_btf refuses a record where two are not), and the
decoder does not care which part a field sits in. `EventLayout.paths` gives each
name's place in C.
"""

from __future__ import annotations

import struct
from collections import namedtuple
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from otelproc.errors import BrokenInstallError
from otelproc.kernel import libbpf
from otelproc.model import EXE_NAME_LEN, EventKind

DEFAULT_OBJECT = Path(str(resources.files("otelproc") / "bpf" / "otelproc.bpf.o"))  # the one shipped


# enum event_kind in bpf/otelproc.h
KERNEL_KINDS = {
    1: EventKind.EXEC,
    2: EventKind.FORK,
    3: EventKind.EXIT,
    4: EventKind.SIGNAL,
    5: EventKind.OOM,
    6: EventKind.REGION,
}

# enum event_flag
EVENT_F_EXE_CUT = 1
EVENT_F_ARGV_CUT = 2
EVENT_F_ENV_CUT = 4
EVENT_F_UNTRACKED = 8
EVENT_F_SENDER_KERNEL = 16
EVENT_F_OOM_MEMCG = 32
EVENT_F_USAGE_CUT = 64

# enum lost_reason
LOST_RINGBUF, LOST_TRACKED_FULL, LOST_UNATTENDED, LOST_MAX = 0, 1, 2, 3
LOST_NAMES = {LOST_RINGBUF: "ringbuf_full", LOST_TRACKED_FULL: "tracked_map_full", LOST_UNATTENDED: "unattended"}

READER = struct.Struct("<QQ")  # struct reader: last_read_ns, unattended_limit_ns
EXE_NAME_KEY = struct.Struct(f"<I{EXE_NAME_LEN}s")  # struct exe_name_key: prefixlen in bits, name bytes

_INT_FORMATS = {
    ("uint", 1): "B",
    ("uint", 2): "H",
    ("uint", 4): "I",
    ("uint", 8): "Q",
    ("int", 1): "b",
    ("int", 2): "h",
    ("int", 4): "i",
    ("int", 8): "q",
}


# A probe pinned by another otelproc may lay struct event out flat, every member at the top level,
# where the oom members carry an oom_ prefix. A takeover reads its ring: there they are read under the
# names the oom part gives them.
FLAT_NAMES = {
    "oom_total_vm": "total_vm",
    "oom_anon_rss": "anon_rss",
    "oom_file_rss": "file_rss",
    "oom_shmem_rss": "shmem_rss",
    "oom_pgtables_bytes": "pgtables_bytes",
    "oom_score_adj": "score_adj",
}


@dataclass(frozen=True)
class EventLayout:
    """struct event of one BPF object: the fixed part every record starts with (the header and the
    parts), then data[]. Fields are named by their own names, whichever part holds them."""

    fixed: struct.Struct  # every member before data[]; a fork, exit, signal or oom record is just this
    fields: Any  # a namedtuple class over those members, in order
    size: int  # sizeof(struct event), data[] included
    offsets: dict[str, int]  # field name -> bytes from the start of the record; "data" too
    paths: dict[str, str]  # field name -> its place in C, "usage.cpu_ns"

    @classmethod
    def from_btf(cls, btf: int) -> EventLayout:
        size, members = libbpf.struct_members(btf, "event")
        if not members or members[-1].name != "data":
            raise BrokenInstallError("struct event in the BPF object does not end with data[]")
        fmt, at = "<", 0
        names: list[str] = []
        defaults: list[int | bytes] = []
        paths: dict[str, str] = {}
        for member in members[:-1]:
            if member.offset < at or member.kind == "bits":
                raise BrokenInstallError(f"struct event: member {member.name} overlaps another or is a bitfield")
            name = member.name.rsplit(".", 1)[-1]
            if "." not in member.name:
                name = FLAT_NAMES.get(name, name)
            if name in paths:
                raise BrokenInstallError(f"struct event: {paths[name]} and {member.name} have the same name")
            fmt += "x" * (member.offset - at)  # padding the compiler put in
            code = _INT_FORMATS.get((member.kind, member.size))
            fmt += code or f"{member.size}s"
            names.append(name)
            paths[name] = member.name
            defaults.append(0 if code else b"")
            at = member.offset + member.size
        fmt += "x" * (members[-1].offset - at)
        paths["data"] = "data"
        offsets = dict(zip(names, (m.offset for m in members[:-1])))
        offsets["data"] = members[-1].offset
        return cls(
            fixed=struct.Struct(fmt),
            fields=namedtuple("EventFields", names, defaults=defaults),  # type: ignore[misc]
            size=size,
            offsets=offsets,
            paths=paths,
        )

    @classmethod
    @lru_cache(maxsize=8)
    def from_object(cls, path: Path) -> EventLayout:
        """The layout in a compiled object on disk, without loading it into the kernel."""
        obj = libbpf.BpfObject(str(path))
        try:
            return cls.from_btf(obj.btf)
        finally:
            obj.close()

    def unpack(self, raw: bytes) -> Any:
        """The fields of a record before data[], by name (a namedtuple)."""
        return self.fields._make(self.fixed.unpack_from(raw))

    def pack(self, data: bytes = b"", **values: Any) -> bytes:
        """A record as the kernel would write it, fields not given zero (for tests and benchmarks)."""
        return self.fixed.pack(*self.fields(**values)) + data
