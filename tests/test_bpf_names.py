"""`bpftool prog show | grep otelproc` and `bpftool map show | grep otelproc` find every program and
map a running otelproc loaded: their names say whose they are."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support.subjects import MATCH_TEST
from otelproc.kernel import pins


def bpftool(*args: str) -> str:
    return subprocess.run(["bpftool", *args], capture_output=True, text=True, check=True, timeout=60).stdout


def test_every_program_and_map_of_a_running_otelproc_is_named_otelproc(sidecar):
    side = sidecar(*MATCH_TEST)
    (probe_dir,) = pins.probes(Path(side.env["OTELPROC_PIN_DIR"]))
    prog_ids = set(pins.prog_ids(probe_dir))
    programs = [p for p in json.loads(bpftool("-j", "prog", "show")) if p["id"] in prog_ids]
    assert len(programs) == len(prog_ids) >= 3  # exec, fork and exit at least
    map_ids = {i for p in programs for i in p.get("map_ids", [])}
    for pin in probe_dir.glob(pins.MAP_PREFIX + "*"):  # a map no program uses is still its own
        map_ids.add(json.loads(bpftool("-j", "map", "show", "pinned", str(pin)))["id"])
    assert len(map_ids) >= 6

    grepped_programs = [line for line in bpftool("prog", "show").splitlines() if "otelproc" in line]
    grepped_maps = [line for line in bpftool("map", "show").splitlines() if "otelproc" in line]
    for i in prog_ids:
        assert any(line.startswith(f"{i}: ") for line in grepped_programs), f"program {i} is not found by its name"
    for i in map_ids:
        assert any(line.startswith(f"{i}: ") for line in grepped_maps), f"map {i} is not found by its name"
