"""What `pip install .` installs (the image does that, not an editable install): every module of the tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_every_module_and_the_probe(tmp_path):
    source = tmp_path / "src"  # a copy: a build/ left in the checkout would hide what the build leaves out
    shutil.copytree(REPO / "otelproc", source / "otelproc", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("otelproc-*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    in_tree = {str(p.relative_to(REPO)) for p in (REPO / "otelproc").rglob("*.py")} | {"otelproc/bpf/otelproc.bpf.o"}
    assert sorted(in_tree - packed) == []
