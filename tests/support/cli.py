"""The `otelproc` command as a user runs it from the checkout, and what every refusal looks like."""

from __future__ import annotations

import os
import subprocess

from support import PYTHON, REPO

OTELPROC = [PYTHON, "-m", "otelproc"]
QUIET = {"OTEL_METRICS_EXPORTER": "none"}  # otelproc's own metrics, which these runs do not look at


def otelproc(*args: str, **kwargs: object) -> subprocess.CompletedProcess:
    """The command as a user runs it, from the checkout."""
    return subprocess.run([*OTELPROC, *args], capture_output=True, text=True, cwd=REPO, timeout=60, **kwargs)


def run_with(*setting: str) -> subprocess.CompletedProcess:
    """`otelproc run` for a second with one setting given by flag, printing to the console, pinning nothing."""
    return otelproc(
        "run",
        *setting,
        "--duration",
        "1",
        env={**os.environ, **QUIET, "OTELPROC_EXPORTER": "console", "OTELPROC_PIN_DIR": ""},
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """What every refusal looks like: exit 2, one line on stderr naming what is wrong, no traceback."""
    assert result.returncode == 2, f"exit status {result.returncode}, not 2 (a refusal): {result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"{len(lines)} lines on stderr, not one: {result.stderr}"
    assert "Traceback" not in result.stderr, f"a traceback: {result.stderr}"
    unnamed = [word for word in words if word not in lines[0]]
    assert not unnamed, f"the line does not name {', '.join(unnamed)}: {lines[0]}"
