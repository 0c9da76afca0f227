"""bpf/otelproc.h is the one definition of the record: Python reads its layout from the object's BTF.

Checked against the C compiler's own sizeof/offsetof, and what BTF cannot carry (the
enum values and bounds mirrored in otelproc/record.py) against the header.
"""

from __future__ import annotations

import filecmp
import subprocess

import pytest

from conftest import REPO
from otelproc import model
from otelproc.kernel import decoder, libbpf, record
from otelproc.clock import BootClock
from otelproc.errors import EXIT_BROKEN_INSTALL, BrokenInstallError
from otelproc.kernel.probe import Probe, ProbeConfig
from otelproc.kernel.record import DEFAULT_OBJECT, EventLayout

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


def test_a_new_field_needs_no_python_mirror(tmp_path):
    """A field added to the header is decoded by name, from a rebuilt object, with nothing else edited."""
    bpf = tmp_path / "bpf"
    subprocess.run(["cp", "-r", str(REPO / "bpf"), str(bpf)], check=True)
    header = bpf / "otelproc.h"
    header.write_text(header.read_text().replace("\t__u32 kind;", "\t__u16 novelty;\n\t__u32 kind;", 1))
    built = tmp_path / "otelproc.bpf.o"
    subprocess.run(["make", "-s", "-C", str(bpf), f"OUT={built}"], check=True)

    layout = EventLayout.from_object(built)
    shipped = EventLayout.from_object(DEFAULT_OBJECT)
    assert layout.offsets["kind"] == shipped.offsets["kind"] + 4  # the u16 plus the padding C adds
    raw = layout.pack(kind=3, pid=4242, novelty=7, exit_code=5 << 8)
    assert layout.unpack(raw).novelty == 7
    event = decoder.decode(raw, BootClock(), layout)
    assert (event.kind, event.pid, event.exit_code) == ("exit", 4242, 5)
    with Probe(ProbeConfig(object_path=built), lambda raw: None) as probe:
        assert probe.layout.offsets == layout.offsets


def test_an_object_missing_a_field_the_decoder_reads_is_refused(tmp_path):
    bpf = tmp_path / "bpf"
    subprocess.run(["cp", "-r", str(REPO / "bpf"), str(bpf)], check=True)
    header = bpf / "otelproc.h"
    header.write_text(header.read_text().replace("__u32 vpid;", "__u32 vpid_renamed;"))
    source = bpf / "otelproc.bpf.c"
    source.write_text(source.read_text().replace("e->vpid", "e->vpid_renamed"))
    built = tmp_path / "otelproc.bpf.o"
    subprocess.run(["make", "-s", "-C", str(bpf), f"OUT={built}"], check=True)
    # A broken install, not a refusal by the kernel: its own exit code (3), not the kernel's (1).
    with pytest.raises(BrokenInstallError, match="has no field vpid; rebuild it") as refused:
        Probe(ProbeConfig(object_path=built), lambda raw: None)
    assert refused.value.exit_code == EXIT_BROKEN_INSTALL


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


def test_committed_object_is_built_from_the_sources(tmp_path):
    """The shipped object must be what `make bpf` builds from bpf/ now."""
    rebuilt = tmp_path / "otelproc.bpf.o"
    subprocess.run(["make", "-s", "-B", "-C", str(REPO / "bpf"), f"OUT={rebuilt}"], check=True)
    assert filecmp.cmp(rebuilt, DEFAULT_OBJECT, shallow=False), "otelproc/bpf/otelproc.bpf.o is stale: run `make bpf`"
