"""The app-side helper's "am I tracked?", run in real processes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from support import PYTHON, REPO


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_the_app_side_does_not_count_a_shim_as_tracked(test_python, tmp_path):
    """The helper's "am I tracked?" is the sidecar's rule: a bash script named like the match list is not
    a tracked parent; a process that loaded a matching interpreter is."""
    name = Path(test_python).name  # the session's own, so that no sidecar of another session tracks it
    shims = tmp_path / "shims"
    shims.mkdir()
    code = "import otelproc.app as a; print(a.process_link() is not None, flush=True)"
    write_script(shims / name, f"#!/bin/bash\n{PYTHON} -c '{code}'\n")  # python as the shim's child
    env = {
        **os.environ,
        "OTELPROC_MATCH": name,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    under_shim = subprocess.run([str(shims / name)], env=env, capture_output=True, text=True, timeout=30)
    assert under_shim.stdout.strip() == "False", under_shim.stderr
    parent = f"import subprocess; subprocess.run([{PYTHON!r}, '-c', {code!r}])"
    under_python = subprocess.run([test_python, "-c", parent], env=env, capture_output=True, text=True, timeout=30)
    assert under_python.stdout.strip() == "True", under_python.stderr
