"""Commands of the container tests (podman, podman-compose), and the stand-in base images they build on."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from support import REPO

BUILD_IMAGES = REPO / "deploy" / "images" / "build.sh"


def run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """ARGS in the repository root; fails the test with the end of their output unless they succeed."""
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)}: exit {done.returncode}\n{(done.stdout + done.stderr)[-3000:]}"
    return done


def require(command: str) -> None:
    if not shutil.which(command):
        pytest.fail(
            f"{command} is not installed: ./install.sh --test installs it",
            pytrace=False,
        )


def build_stand_ins(*names: str) -> None:
    """The base images the files name (NAMES: only these), built here; seconds when nothing changed."""
    require("podman")
    run(str(BUILD_IMAGES), *names, timeout=3600)
