"""Overhead on the watched workload: what tracing adds to a storm of fork + exec + wait.

The storm driver (bench/c/storm.c) runs the tiny program (bench/c/tiny.c) N times in a row,
under a name otelproc tracks (matched) and one it ignores (unmatched), with no tracer, with
`otelproc run` exporting to a local OTLP receiver, and with a bpftrace one-liner doing the
same exec/exit work (comm filter, one printf per event) as a reference point. Conditions
alternate round by round (and rotate, so none always goes first), because a shared machine
drifts; each result is the median over rounds, and its ratio to the untraced median.

After a matched storm under otelproc the next storm waits until the receiver has every span,
so that one storm's export does not land in the next one's timing; otelproc's CPU for the
storm and its export is recorded on the side.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import common
from common import MATCHED, Bpftrace, Otelproc, Programs, Receiver, Table, Target, median

CONDITIONS = ("no tracer", "otelproc", "bpftrace")
SETTLE_S = 1.0  # after a tracer attached (and after nothing, alike), before its first storm
WORKLOADS = ("matched", "unmatched")
TARGETS = {"matched": 1.05, "unmatched": 1.02}


class Tracer:
    """One condition's tracer, started for a round and stopped after it."""

    def __init__(self, condition: str, receiver: Receiver) -> None:
        self.condition = condition
        self.otelproc: Otelproc | None = None
        self.bpftrace: Bpftrace | None = None
        if condition == "otelproc":
            self.otelproc = Otelproc(MATCHED, receiver.endpoint)
            self.otelproc.wait_attached()
        elif condition == "bpftrace":
            self.bpftrace = Bpftrace(MATCHED)
            self.bpftrace.wait_attached()
        time.sleep(SETTLE_S)  # start-up work (imports, first exports) out of the way of the first storm

    def stop(self) -> dict[str, Any]:
        """What the tracer said it saw, to check that it did trace."""
        if self.otelproc is not None:
            report = self.otelproc.stop()
            return {"events": report.events, "spans": report.spans, "dropped": report.dropped_text()}
        if self.bpftrace is not None:
            return {"lines": self.bpftrace.stop()}
        return {}

    def kill(self) -> None:
        for tracer in (self.otelproc, self.bpftrace):
            if tracer is not None:
                tracer.kill()


def run_round(
    index: int, programs: Programs, receiver: Receiver, iterations: int, runs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every condition once, in an order rotated by the round's index; both workloads under each."""
    shift = index % len(CONDITIONS)
    tracer_reports = []
    for condition in CONDITIONS[shift:] + CONDITIONS[:shift]:
        tracer = Tracer(condition, receiver)
        try:
            workloads = WORKLOADS if index % 2 == 0 else WORKLOADS[::-1]
            for workload in workloads:
                program = programs.matched if workload == "matched" else programs.unmatched
                receiver.reset()
                cpu_before = tracer.otelproc.cpu_seconds() if tracer.otelproc else 0.0
                result = common.storm(programs, program, iterations)
                run: dict[str, Any] = {
                    "round": index,
                    "condition": condition,
                    "workload": workload,
                    "elapsed_ns": result.elapsed_ns,
                }
                if tracer.otelproc is not None:
                    if workload == "matched":
                        receiver.wait_for(iterations, 120, idle=10)
                        run["spans_received"] = receiver.spans
                    run["otelproc_cpu_s"] = tracer.otelproc.cpu_seconds() - cpu_before
                runs.append(run)
                per_lifetime = result.elapsed_ns / iterations / 1000
                print(f"round {index} {condition:9} {workload:9} {per_lifetime:8.1f} µs/lifetime", flush=True)
            tracer_reports.append({"round": index, "condition": condition, **tracer.stop()})
        finally:
            tracer.kill()
    return tracer_reports


def summarize(runs: list[dict[str, Any]], iterations: int) -> tuple[Table, dict[tuple[str, str], float]]:
    """Median per condition and workload, its ratio to no tracer, and the per-round ratios' spread."""
    medians: dict[tuple[str, str], float] = {}
    rows = []
    for workload in WORKLOADS:
        base_by_round = {
            r["round"]: r["elapsed_ns"] for r in runs if r["condition"] == "no tracer" and r["workload"] == workload
        }
        base = median(base_by_round.values())
        for condition in CONDITIONS:
            mine = [r for r in runs if r["condition"] == condition and r["workload"] == workload]
            times = [r["elapsed_ns"] for r in mine]
            med = median(times)
            medians[(condition, workload)] = med / base
            paired = sorted(r["elapsed_ns"] / base_by_round[r["round"]] for r in mine if r["round"] in base_by_round)
            cpu = [r["otelproc_cpu_s"] for r in mine if "otelproc_cpu_s" in r]
            rows.append(
                [
                    workload,
                    condition,
                    len(times),
                    med / iterations / 1000,
                    min(times) / iterations / 1000,
                    max(times) / iterations / 1000,
                    med / base,
                    f"{paired[0]:.3f}–{paired[-1]:.3f}",
                    median(cpu) / iterations * 1e6 if cpu else float("nan"),
                ]
            )
    table = Table(
        "Storm wall time",
        [
            "workload",
            "condition",
            "runs",
            "median µs/lifetime",
            "min",
            "max",
            "ratio to no tracer (medians)",
            "per-round ratios (min–max)",
            "otelproc CPU µs/lifetime",
        ],
        rows,
        note=f"{iterations:,} fork+exec+wait of the tiny program per run; otelproc CPU covers the storm and the "
        "export of its spans (utime+stime of the otelproc process).",
    )
    return table, medians


def plot(runs: list[dict[str, Any]], medians: dict[tuple[str, str], float], path: Path) -> None:
    plt = common.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"no tracer": "#999999", "otelproc": "#1f77b4", "bpftrace": "#ff7f0e"}
    width = 0.25
    for w, workload in enumerate(WORKLOADS):
        base = median(r["elapsed_ns"] for r in runs if r["condition"] == "no tracer" and r["workload"] == workload)
        for c, condition in enumerate(CONDITIONS):
            x = w + (c - 1) * width
            ax.bar(
                x,
                medians[(condition, workload)],
                width * 0.9,
                color=colors[condition],
                label=condition if w == 0 else None,
            )
            dots = [r["elapsed_ns"] / base for r in runs if r["condition"] == condition and r["workload"] == workload]
            ax.plot([x] * len(dots), dots, "k.", markersize=4)
        ax.hlines(
            TARGETS[workload],
            w - 1.5 * width,
            w + 1.5 * width,
            colors="red",
            linestyles="dashed",
            label="otelproc target" if w == 0 else None,
        )
    names = {"matched": MATCHED, "unmatched": common.UNMATCHED}
    ax.set_xticks(range(len(WORKLOADS)), [f"{w} ({names[w]})" for w in WORKLOADS])
    ax.set_ylabel("storm wall time / untraced median")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)
    ax.set_title("Overhead on a fork+exec+wait storm (bars: medians, dots: runs)")
    ax.legend(fontsize=8, loc="upper center", ncol=4)
    common.save_plot(fig, path)


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, help="lifetimes per storm (default 10000; --quick 500)")
    p.add_argument("--rounds", type=int, help="rounds of every condition (default 7; --quick 2)")
    args: argparse.Namespace = p.parse_args()
    common.require_root()
    iterations = args.iterations or (500 if args.quick else 10_000)
    rounds = args.rounds or (2 if args.quick else 7)
    out = common.out_dir(args)
    info = common.machine()
    programs = common.build()

    receiver = Receiver()
    runs: list[dict[str, Any]] = []
    tracer_reports: list[dict[str, Any]] = []
    try:
        for program in (programs.matched, programs.unmatched):  # warm caches before anything counts
            common.storm(programs, program, min(iterations, 1000))
        for index in range(rounds):
            tracer_reports += run_round(index, programs, receiver, iterations, runs)
    finally:
        receiver.stop()

    table, medians = summarize(runs, iterations)
    checks = Table(
        "What each tracer saw",
        ["round", "condition", "report"],
        [
            [t["round"], t["condition"], ", ".join(f"{k}={v}" for k, v in t.items() if k not in ("round", "condition"))]
            for t in tracer_reports
            if t["condition"] != "no tracer"
        ],
        note=f"Per round, from the matched storm only: otelproc should count {2 * iterations:,} events and "
        f"{iterations:,} spans, bpftrace print {2 * iterations:,} lines.",
    )
    lost = [r for r in runs if r.get("spans_received", iterations) != iterations]
    targets = [
        Target(
            f"{w} storm under otelproc, wall time vs no tracer",
            f"<= {TARGETS[w]}x",
            f"{medians[('otelproc', w)]:.3f}x",
            medians[("otelproc", w)] <= TARGETS[w],
        )
        for w in WORKLOADS
    ]
    targets.append(
        Target(
            "every matched lifetime exported (spans at the receiver)",
            "all",
            "all" if not lost else f"{len(lost)} storms short",
            not lost,
        )
    )
    common.write_results(
        out,
        "overhead",
        "Overhead on a fork+exec+wait storm",
        info,
        {
            "iterations": iterations,
            "rounds": rounds,
            "tiny_program": "static" if programs.static else "dynamic",
            "otelproc": "run --match " + MATCHED + " --adopt false, OTLP/gRPC to a local receiver",
            "bpftrace": common.BPFTRACE_PROGRAM.format(name=MATCHED),
        },
        [table, checks],
        targets,
        {"runs": runs, "tracers": tracer_reports},
    )
    plot(runs, medians, out / "overhead.png")


if __name__ == "__main__":
    main()
