"""bpf/otelproc.h is the one definition of the record: Python reads its layout from the object's BTF.

Checked against the C compiler's own sizeof/offsetof (needs cc and the kernel's uapi headers,
linux/types.h), and what BTF cannot carry (the enum values and bounds mirrored in
otelproc/kernel/record.py) against the header. The shipped object's BTF is read through
libbpf.so.1, without loading anything into the kernel.
"""

from __future__ import annotations

import subprocess

from otelproc import model
from otelproc.kernel import libbpf, record
from otelproc.kernel.record import DEFAULT_OBJECT, EventLayout
from support import REPO


CONSTANTS = (
    "TASK_COMM_LEN EXE_NAME_LEN EVENT_F_EXE_CUT EVENT_F_ARGV_CUT EVENT_F_ENV_CUT EVENT_F_UNTRACKED "
    "EVENT_F_SENDER_KERNEL EVENT_F_OOM_MEMCG "
    "LOST_RINGBUF LOST_TRACKED_FULL LOST_UNATTENDED LOST_MAX"
).split()


def c_layout(tmp_path, fields: list[str], constants: list[str]) -> dict[str, int]:
    """sizeof, offsetof and the constants, as the C compiler sees bpf/otelproc.h."""
    lines = [f'printf("offset.{f} %zu\\n", offsetof(struct event, {f}));' for f in fields]
    lines += [f'printf("const.{c} %ld\\n", (long){c});' for c in constants]
    lines += ['printf("size.reader %zu\\n", sizeof(struct reader));',
              'printf("offset.reader.unattended_limit_ns %zu\\n", offsetof(struct reader, unattended_limit_ns));']
    lines += ['printf("size.event %zu\\n", sizeof(struct event));', 'printf("size.exe_name_key %zu\\n", sizeof(struct exe_name_key));']
    src = tmp_path / "layout.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n#include \"otelproc.h\"\n"
        "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n"
    )
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-I", str(REPO / "bpf"), str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_btf_layout_is_the_c_compilers(tmp_path):
    layout = EventLayout.from_object(DEFAULT_OBJECT)
    kinds = {f"EVENT_{k.name}": v for v, k in record.KERNEL_KINDS.items()}
    c = c_layout(tmp_path, list(layout.offsets), [*CONSTANTS, *kinds])
    assert c["size.event"] == layout.size
    assert {f: c[f"offset.{f}"] for f in layout.offsets} == layout.offsets
    assert layout.header.size == layout.offsets["data"], "the header is everything before data[]"
    assert c["size.exe_name_key"] == record.EXE_NAME_KEY.size
    assert (c["size.reader"], c["offset.reader.unattended_limit_ns"]) == (record.READER.size, 8)  # <QQ
    assert {name: c[f"const.{name}"] for name in CONSTANTS} == {name: getattr(record if hasattr(record, name) else model, name) for name in CONSTANTS}
    assert {name: c[f"const.{name}"] for name in kinds} == kinds
    assert sorted(record.LOST_NAMES) == list(range(record.LOST_MAX)), "every lost counter has a name"


def test_struct_members_resolve_typedefs():
    obj = libbpf.BpfObject(str(DEFAULT_OBJECT))
    try:
        size, members = libbpf.struct_members(obj.btf, "event")
    finally:
        obj.close()
    by_name = {m.name: m for m in members}
    assert (by_name["time_ns"].size, by_name["time_ns"].kind) == (8, "uint")  # __u64
    assert (by_name["exe_len"].size, by_name["exe_len"].kind) == (2, "uint")  # __u16
    assert (by_name["comm"].size, by_name["comm"].kind) == (model.TASK_COMM_LEN, "bytes")
    assert members[-1].name == "data" and members[-1].offset + members[-1].size == size
