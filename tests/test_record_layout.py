"""bpf/otelproc.h is the one definition of the record: Python reads its layout from the object's BTF.

Here, objects rebuilt from edited sources (clang, bpftool) and loaded: a new field needs no Python
mirror, a missing one is refused; and the committed object is what the sources build. The layout
against the C compiler's sizeof/offsetof, and the mirrored constants: tests/unit/kernel/test_record.py.
"""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

import pytest

from support import REPO
from otelproc.kernel import decoder
from otelproc.clock import BootClock
from otelproc.errors import EXIT_BROKEN_INSTALL, BrokenInstallError
from otelproc.kernel.libbpf import LibbpfError
from otelproc.kernel.probe import Probe, ProbeConfig
from otelproc.kernel.record import DEFAULT_OBJECT, EventLayout


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
    source.write_text(source.read_text().replace("->vpid", "->vpid_renamed"))
    built = tmp_path / "otelproc.bpf.o"
    subprocess.run(["make", "-s", "-C", str(bpf), f"OUT={built}"], check=True)
    # A broken install, not a refusal by the kernel: its own exit code (3), not the kernel's (1).
    with pytest.raises(BrokenInstallError, match="has no field vpid; rebuild it") as refused:
        Probe(ProbeConfig(object_path=built), lambda raw: None)
    assert refused.value.exit_code == EXIT_BROKEN_INSTALL


def test_a_pinned_probe_whose_records_cannot_be_read_is_refused_with_what_to_do(tmp_path, pin_root, monkeypatch):
    """Another otelproc's pinned probe whose struct event lacks a field this one reads: no takeover, and
    the message names the probe and `otelproc detach`, not a rebuild of this otelproc's object."""
    bpf = tmp_path / "bpf"
    subprocess.run(["cp", "-r", str(REPO / "bpf"), str(bpf)], check=True)
    header = bpf / "otelproc.h"
    header.write_text(header.read_text().replace("__u32 vpid;", "__u32 vpid_renamed;"))
    source = bpf / "otelproc.bpf.c"
    source.write_text(source.read_text().replace("->vpid", "->vpid_renamed"))
    built = tmp_path / "otelproc.bpf.o"
    subprocess.run(["make", "-s", "-C", str(bpf), f"OUT={built}"], check=True)
    pin_dir = Path(pin_root.new_dir())
    try:
        with monkeypatch.context() as patched:  # pinned as an otelproc that reads vpid_renamed would
            patched.setattr(decoder, "check_layout", lambda layout: None)
            Probe(ProbeConfig(object_path=built, pin_dir=pin_dir), lambda raw: None).close()
        with pytest.raises(
            LibbpfError,
            match=r"writes records this otelproc cannot read \(its struct event has "
            r"no field vpid\); remove it with `otelproc detach`",
        ):
            Probe(ProbeConfig(pin_dir=pin_dir), lambda raw: None)
    finally:
        pin_root.remove(pin_dir)


def test_committed_object_is_built_from_the_sources(tmp_path):
    """The shipped object must be what `make bpf` builds from bpf/ now."""
    rebuilt = tmp_path / "otelproc.bpf.o"
    subprocess.run(["make", "-s", "-B", "-C", str(REPO / "bpf"), f"OUT={rebuilt}"], check=True)
    assert filecmp.cmp(rebuilt, DEFAULT_OBJECT, shallow=False), "otelproc/bpf/otelproc.bpf.o is stale: run `make bpf`"
