"""Bad usage of the `otelproc` command, as a user meets it: one line on stderr, exit status 2, no traceback.

Real subprocesses; each is refused before it needs a privilege or the kernel.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from otelproc.matching import EXE_NAME_MAX
from unit.support import PYTHON, REPO


OTELPROC = [PYTHON, "-m", "otelproc"]


def otelproc(*args: str, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run([*OTELPROC, *args], capture_output=True, text=True, cwd=REPO, timeout=60, **kwargs)


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


def test_unknown_flag_is_one_line():
    assert_one_line_error(otelproc("events", "--frobnicate"), "--frobnicate")


@pytest.mark.parametrize("bad", ["py*thon", "", "python,,uvicorn", "a" * (EXE_NAME_MAX + 1), "/usr/bin/python3"])
def test_malformed_match_list_is_one_line(bad):
    assert_one_line_error(otelproc("events", "--match", bad), "--match")


def test_malformed_match_list_from_environment():
    assert_one_line_error(otelproc("events", env={**os.environ, "OTELPROC_MATCH": "*"}), "OTELPROC_MATCH")


QUIET = {"OTEL_METRICS_EXPORTER": "none"}


# (A state file otelproc cannot write is found once it holds its privileges: tests/test_reliability.py.)
@pytest.mark.parametrize("bad", [
    ("--sweep-interval", "0"), ("--health-port", "70000"), ("--exporter", "zipkin"), ("--otlp-protocol", "thrift"),
])
def test_bad_configuration_is_one_line(bad):
    result = subprocess.run([PYTHON, "-m", "otelproc", "run", *bad, "--duration", "1"], capture_output=True,
                            text=True, cwd=REPO, timeout=60,
                            env={**os.environ, **QUIET, "OTELPROC_EXPORTER": "console", "OTELPROC_PIN_DIR": ""})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and bad[0] in lines[0] and "Traceback" not in result.stderr
