"""deploy/jaeger/build.sh: its cache works without Go, a refused version is asked for once, Go is checked.

Go itself is replaced by a small script on PATH that answers like a Go whose module
proxy refuses the preferred version (the way proxy.golang.org answers here), and
records how it was called; the cache is a directory of the test's own.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support import REPO

BUILD = REPO / "deploy" / "jaeger" / "build.sh"
FAKE_GO = """#!/bin/bash
echo "$*" >> "{log}"
case "$1 $2" in
    "env GOVERSION") echo {version} ;;
    "env GOPROXY") echo https://proxy.example ;;
    "mod init") ;;
    "get -tool") echo "go: $3: invalid version: reading https://proxy.example/x.info: 403 Forbidden" >&2; exit 1 ;;
    *) exit 1 ;;
esac
"""


@pytest.fixture
def place(tmp_path: Path):
    """A cache holding only the fallback version, and a bin directory for a fake go."""
    cached = tmp_path / "cache" / "otelproc" / "jaeger-v1.76.0" / "jaeger"
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    cached.chmod(0o755)
    (tmp_path / "bin").mkdir()
    return tmp_path


def run(place: Path, *args: str, go_version: str | None = "go1.26.0") -> subprocess.CompletedProcess:
    if go_version:
        go = place / "bin" / "go"
        go.write_text(FAKE_GO.format(log=place / "go.log", version=go_version))
        go.chmod(0o755)
    env = {"PATH": f"{place / 'bin'}:/usr/bin:/bin", "HOME": str(place), "XDG_CACHE_HOME": str(place / "cache")}
    return subprocess.run([str(BUILD), *args], env=env, capture_output=True, text=True, timeout=60)


def go_calls(place: Path) -> list[str]:
    log = place / "go.log"
    return [line for line in log.read_text().splitlines() if line.startswith("get")] if log.exists() else []


def test_the_cache_serves_without_go(place):
    result = run(place, go_version=None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(place / "cache" / "otelproc" / "jaeger-v1.76.0" / "jaeger")


def test_a_refused_version_is_asked_for_once_and_again_on_retry(place):
    first = run(place)
    assert first.returncode == 0 and first.stdout.strip().endswith("jaeger-v1.76.0/jaeger"), first.stderr
    assert len(go_calls(place)) == 1 and "403 Forbidden" in first.stderr
    second = run(place)
    assert second.returncode == 0 and "refused it on" in second.stderr and "--retry" in second.stderr
    assert len(go_calls(place)) == 1, "the refused version was asked for again"
    assert run(place, "--retry").returncode == 0
    assert len(go_calls(place)) == 2


def test_go_too_old_or_missing_says_what_to_install(place):
    for version in ("go1.22.4", None):
        result = run(place, "--check-go", go_version=version)
        assert result.returncode == 2
        (line,) = result.stderr.splitlines()
        assert "Go >= 1.24.6" in line and "https://go.dev/dl/go1.24.6.linux-" in line
        (place / "bin" / "go").unlink(missing_ok=True)
    assert run(place, "--check-go", go_version="go1.26.0").returncode == 0


def test_without_go_and_cache_it_says_what_to_install(place):
    for path in (place / "cache").rglob("jaeger"):
        os.unlink(path)
    result = run(place, go_version=None)
    assert result.returncode == 2 and "go.dev/dl/go1.24.6" in result.stderr and not result.stdout
