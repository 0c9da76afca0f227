"""Every benchmark, one after the other, then SUMMARY.md: every target and how it did.

    python3 bench/run_all.py            # the full set (about 30 minutes), results in bench/results/
    python3 bench/run_all.py --quick    # a smoke run of each, results in bench/work/results-quick/

Each benchmark runs in a process of its own (the same interpreter as this one), so one that
fails does not stop the others; the summary says which failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common

# The span path first: it needs neither root nor the kernel, and says the most about the rest.
BENCHMARKS = (
    "span_path",
    "overhead",
    "throughput",
    "latency",
    "footprint",
    "soak",
    "many_live",
    "many_nodes",
    "app_side",
    "process_metrics",
    "churn",
)


def summary(out: Path, ran: dict[str, int], machine_info: dict[str, Any]) -> str:
    """Every target of every result in `out`: those just run, and those left from an earlier run
    (--skip), each with the commit it measured."""
    lines = ["# otelproc benchmarks", "", f"Machine: {common.machine_line(machine_info)}", ""]
    lines += ["| benchmark | otelproc | what | target | measured | verdict |", "|---|---|---|---|---|---|"]
    for name in BENCHMARKS:
        path = out / f"{name}.json"
        if ran.get(name, 0) != 0:
            lines.append(f"| [{name}]({name}.md) | | the benchmark failed (exit status {ran[name]}) | | | **FAILED** |")
        elif path.exists():
            result = json.loads(path.read_text())
            commit = result["machine"]["otelproc_commit"]
            for t in result["targets"]:
                lines.append(
                    f"| [{name}]({name}.md) | {commit} | {t['what']} | {t['goal']} | {t['measured']} | {t['verdict']} |"
                )
    plots = sorted(p.name for p in out.glob("*.png"))
    if plots:
        lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in plots)]
    profile = out / "span_path_profile.txt"
    if profile.exists():
        lines += ["", f"Profile of the span path: [{profile.name}]({profile.name})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--skip", action="append", default=[], choices=BENCHMARKS, help="leave a benchmark out")
    args = p.parse_args()
    common.require_root()
    out = common.out_dir(args)
    info = common.machine()
    ran: dict[str, int] = {}
    for name in BENCHMARKS:
        if name in args.skip:
            continue
        command = [common.PYTHON, str(common.BENCH / f"{name}.py"), "--out", str(out)]
        command += ["--quick"] if args.quick else []
        print(f"\n==== {name} ====", flush=True)
        started = time.monotonic()
        ran[name] = subprocess.run(command, check=False).returncode
        print(f"==== {name}: exit status {ran[name]} after {time.monotonic() - started:.0f} s ====", flush=True)
    text = summary(out, ran, info)
    (out / "SUMMARY.md").write_text(text)
    print("\n" + text)
    sys.exit(1 if any(ran.values()) else 0)


if __name__ == "__main__":
    main()
