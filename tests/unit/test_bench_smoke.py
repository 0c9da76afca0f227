"""The benchmark harness still runs: the span path's smoke run (no kernel, no network).

A smoke run checks the harness, not a number: the numbers live in bench/results/.
"""

from __future__ import annotations

import json
import subprocess

from support import PYTHON, REPO


def test_span_path_benchmark_smoke(tmp_path):
    result = subprocess.run(
        [PYTHON, "bench/span_path.py", "--quick", "--lifetimes", "500", "--repeat", "1", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "span_path.json").read_text())
    whole = data["tables"][0]
    assert [row[0] for row in whole["rows"]] == ["storm", "service"]
    assert all(row[1] > 0 and row[6] > 0 for row in whole["rows"])  # CPU per lifetime, OTLP bytes per span
    assert {t["what"] for t in data["targets"]} == {
        "CPU per lifetime, storm processes",
        "CPU per lifetime, service processes",
    }
    assert "| storm |" in (tmp_path / "span_path.md").read_text()
