"""bpf/otelproc.h is the one definition of the record: Python reads its layout from the object's BTF.

Checked against the C compiler's own sizeof/offsetof (needs cc and the kernel's uapi headers,
linux/types.h), and what BTF cannot carry (the enum values and bounds mirrored in
otelproc/kernel/record.py) against the header. The shipped object's BTF is read through
libbpf.so.1, without loading anything into the kernel.
"""

from __future__ import annotations

import subprocess

from otelproc import model
from otelproc.clock import BootClock
from otelproc.kernel import decoder, libbpf, record
from otelproc.kernel.record import DEFAULT_OBJECT, EventLayout
from otelproc.model import PAGE_SIZE
from support import REPO

FLAT_OBJECT = REPO / "tests" / "data" / "flat-event.bpf.o"  # struct event without parts (tests/data/README.md)


CONSTANTS = (
    "TASK_COMM_LEN EXE_NAME_LEN EVENT_F_EXE_CUT EVENT_F_ARGV_CUT EVENT_F_ENV_CUT EVENT_F_UNTRACKED "
    "EVENT_F_SENDER_KERNEL EVENT_F_OOM_MEMCG EVENT_F_USAGE_CUT "
    "LOST_RINGBUF LOST_TRACKED_FULL LOST_UNATTENDED LOST_MAX"
).split()


def c_layout(tmp_path, fields: list[str], constants: list[str]) -> dict[str, int]:
    """sizeof, offsetof and the constants, as the C compiler sees bpf/otelproc.h."""
    lines = [f'printf("offset.{f} %zu\\n", offsetof(struct event, {f}));' for f in fields]
    lines += [f'printf("const.{c} %ld\\n", (long){c});' for c in constants]
    lines += [
        'printf("size.reader %zu\\n", sizeof(struct reader));',
        'printf("offset.reader.unattended_limit_ns %zu\\n", offsetof(struct reader, unattended_limit_ns));',
    ]
    lines += [
        'printf("size.event %zu\\n", sizeof(struct event));',
        'printf("size.exe_name_key %zu\\n", sizeof(struct exe_name_key));',
    ]
    src = tmp_path / "layout.c"
    src.write_text(
        '#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n#include "otelproc.h"\n'
        "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n"
    )
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-I", str(REPO / "bpf"), str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_btf_layout_is_the_c_compilers(tmp_path):
    layout = EventLayout.from_object(DEFAULT_OBJECT)
    kinds = {f"EVENT_{k.name}": v for v, k in record.KERNEL_KINDS.items()}
    c = c_layout(tmp_path, list(layout.paths.values()), [*CONSTANTS, *kinds])
    assert c["size.event"] == layout.size
    assert {f: c[f"offset.{layout.paths[f]}"] for f in layout.offsets} == layout.offsets
    assert layout.fixed.size == layout.offsets["data"], "the fixed part is everything before data[]"
    assert c["size.exe_name_key"] == record.EXE_NAME_KEY.size
    assert (c["size.reader"], c["offset.reader.unattended_limit_ns"]) == (record.READER.size, 8)  # <QQ
    assert {name: c[f"const.{name}"] for name in CONSTANTS} == {
        name: getattr(record if hasattr(record, name) else model, name) for name in CONSTANTS
    }
    assert {name: c[f"const.{name}"] for name in kinds} == kinds
    assert sorted(record.LOST_NAMES) == list(range(record.LOST_MAX)), "every lost counter has a name"


def test_struct_members_resolve_typedefs_and_descend_into_parts():
    obj = libbpf.BpfObject(str(DEFAULT_OBJECT))
    try:
        size, members = libbpf.struct_members(obj.btf, "event")
    finally:
        obj.close()
    by_name = {m.name: m for m in members}
    assert (by_name["header.time_ns"].size, by_name["header.time_ns"].kind) == (8, "uint")  # __u64
    assert (by_name["header.exe_len"].size, by_name["header.exe_len"].kind) == (2, "uint")  # __u16
    assert (by_name["header.comm"].size, by_name["header.comm"].kind) == (model.TASK_COMM_LEN, "bytes")
    assert (by_name["oom.score_adj"].size, by_name["oom.score_adj"].kind) == (4, "int")  # __s32
    assert by_name["header.time_ns"].offset == 0 and by_name["usage.cpu_ns"].offset > 0, (
        "offsets from the record's start"
    )
    end = members[-1].offset + members[-1].size
    assert members[-1].name == "data" and size == (end + 7) // 8 * 8, "data[] last, then the padding to 8 bytes"
    assert [m.offset for m in members] == sorted(m.offset for m in members)


def test_struct_members_of_a_flat_struct_are_its_own():
    obj = libbpf.BpfObject(str(DEFAULT_OBJECT))
    try:
        _, members = libbpf.struct_members(obj.btf, "reader")
    finally:
        obj.close()
    assert [(m.name, m.offset, m.size) for m in members] == [("last_read_ns", 0, 8), ("unattended_limit_ns", 8, 8)]


def test_a_flat_record_reads_under_the_names_of_the_parts():
    """A pinned probe whose struct event has no parts is taken over: its ring is read with its own layout."""
    flat, shipped = EventLayout.from_object(FLAT_OBJECT), EventLayout.from_object(DEFAULT_OBJECT)
    # Every field the flat record had, under the same name; the region part came after it.
    assert set(flat.fields._fields) == set(shipped.fields._fields) - {"region_fd"}
    assert decoder.written_by(flat) == [k for k in decoder.KERNEL_KINDS if k != 6]
    assert flat.paths["total_vm"] == "oom_total_vm" and shipped.paths["total_vm"] == "oom.total_vm"
    assert flat.offsets != shipped.offsets
    decoder.check_layout(flat)
    raw = flat.pack(kind=5, pid=4242, total_vm=31, anon_rss=32, pgtables_bytes=35, score_adj=-36)
    event = decoder.decode(raw, BootClock(), flat)
    assert (event.pid, event.oom.total_vm, event.oom.anon_rss, event.oom.pgtables, event.oom.score_adj) == (
        4242,
        31 * PAGE_SIZE,
        32 * PAGE_SIZE,
        35,
        -36,
    )
    exited = decoder.decode(flat.pack(kind=3, pid=4242, cpu_ns=5_000, nvcsw=7), BootClock(), flat)
    assert (exited.usage.cpu_user_ns, exited.usage.voluntary_switches) == (5_000, 7)
