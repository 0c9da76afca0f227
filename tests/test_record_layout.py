"""The C event record and its Python mirror agree, checked three independent ways."""

from __future__ import annotations

import filecmp
import subprocess

import pytest

from conftest import REPO
from otelproc import libbpf, record
from otelproc.libbpf import LibbpfError
from otelproc.loader import DEFAULT_OBJECT, check_layout

CONSTANTS = (
    "TASK_COMM_LEN EXE_NAME_LEN CGROUP_NAME_MAX EXE_MAX ARGV_MAX ENV_MAX DATA_MAX EVENT_EXEC EVENT_FORK EVENT_EXIT "
    "EVENT_F_EXE_CUT EVENT_F_ARGV_CUT EVENT_F_ENV_CUT EVENT_F_UNTRACKED LOST_RINGBUF LOST_TRACKED_FULL LOST_MAX"
).split()


def c_layout(tmp_path) -> dict[str, int]:
    """sizeof, offsetof and the constants, as the C compiler sees bpf/otelproc.h."""
    fields = [name for name, _ in record.EVENT_FIELDS]
    lines = [f'printf("offset.{f} %zu\\n", offsetof(struct event, {f}));' for f in fields]
    lines += [f'printf("const.{c} %ld\\n", (long){c});' for c in CONSTANTS]
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


def test_c_compiler_layout_matches_python(tmp_path):
    c = c_layout(tmp_path)
    size, offsets = record.event_layout()
    assert c["size.event"] == size == record.EVENT_SIZE
    assert {f: c[f"offset.{f}"] for f in offsets} == offsets
    assert c["size.exe_name_key"] == record.EXE_NAME_KEY.size
    assert {name: c[f"const.{name}"] for name in CONSTANTS} == {name: getattr(record, name) for name in CONSTANTS}


def test_object_btf_layout_matches_python():
    obj = libbpf.BpfObject(str(DEFAULT_OBJECT))
    try:
        assert libbpf.struct_layout(obj.btf, "event") == record.event_layout()
        check_layout(obj.btf)
    finally:
        obj.close()


def test_drifted_mirror_is_refused(monkeypatch):
    swapped = list(record.EVENT_FIELDS)
    swapped[4], swapped[5] = swapped[5], swapped[4]  # flags before pid: same size, wrong offsets
    monkeypatch.setattr(record, "EVENT_FIELDS", tuple((n, f) for n, f in swapped))
    obj = libbpf.BpfObject(str(DEFAULT_OBJECT))
    try:
        with pytest.raises(LibbpfError, match="does not match"):
            check_layout(obj.btf)
    finally:
        obj.close()


def test_committed_object_is_built_from_the_sources(tmp_path):
    """The shipped object must be what `make bpf` builds from bpf/ now."""
    rebuilt = tmp_path / "otelproc.bpf.o"
    subprocess.run(["make", "-s", "-B", "-C", str(REPO / "bpf"), f"OUT={rebuilt}"], check=True)
    assert filecmp.cmp(rebuilt, DEFAULT_OBJECT, shallow=False), "otelproc/bpf/otelproc.bpf.o is stale: run `make bpf`"
