"""Throughput and loss: matched process lifetimes at the machine's full rate, counted at the receiver.

One storm of N matched lifetimes (default 20,000), one driver worker per core, as fast as the
machine forks and execs, through a fresh `otelproc run`. A lifetime is lost when its span never
reaches the receiver; otelproc says why when it stops (the kernel dropped a record, its batch
queue was full, an export failed). When the full rate loses spans, the storm is paced at lower
rates until one loses nothing, and that rate is what otelproc sustains.

CPU per 1,000 lifetimes is otelproc's utime+stime from just before the storm until the
receiver has the last span: ring buffer, decoding, tracking, spans, OTLP encoding and gRPC.
"""

from __future__ import annotations

import os
import time
from typing import Any

import common
from common import MATCHED, Otelproc, Programs, Receiver, RssSampler, Table, Target, percentile

STEP_DOWN = (0.75, 0.5, 0.35, 0.25, 0.15, 0.1)  # fractions of the full rate, tried in turn after a loss
# otelproc kept up with a storm when its last span arrived within the batch processor's schedule
# delay (otelproc's default 1 s) and a little more after the storm ended; else it was catching up.
KEPT_UP_S = 1.5


def trial(programs: Programs, receiver: Receiver, lifetimes: int, jobs: int, rate: float) -> dict[str, Any]:
    """One storm through a fresh otelproc; what arrived, what was lost, what it cost."""
    receiver.reset()
    otelproc = Otelproc(MATCHED, receiver.endpoint)
    try:
        otelproc.wait_attached()
        time.sleep(1)  # let start-up work settle out of the CPU reading
        cpu_before = otelproc.cpu_seconds()
        sampler = RssSampler(otelproc.pid, 0.2)
        result = common.storm(programs, programs.matched, lifetimes, jobs, rate)
        complete = receiver.wait_for(lifetimes, timeout=max(120.0, lifetimes / 100), idle=15)
        cpu = otelproc.cpu_seconds() - cpu_before
        last_arrival = receiver.arrivals[-1][0] / 1e9 if receiver.arrivals else float("nan")
        samples = sampler.stop()
        report = otelproc.stop()
    finally:
        otelproc.kill()
    received = receiver.spans  # after stop: whatever otelproc flushed at SIGTERM counts too
    latencies = receiver.latencies_ns()
    lost = lifetimes - received
    drain = last_arrival - result.finished
    zero_loss = lost == 0 and report.dropped_nothing
    end_to_end = received / (last_arrival - result.started) if received else 0.0
    return {
        "asked_rate": rate or "full",
        "driver_rate": result.rate,
        "end_to_end_rate": end_to_end,
        "drain_s": drain,
        # what otelproc sustains: the storm's rate if it kept up, else the rate it got spans out at
        "sustained_rate": (result.rate if drain <= KEPT_UP_S else end_to_end) if zero_loss else 0.0,
        "received": received,
        "lost_at_receiver": lost,
        "complete_before_stop": complete,
        "dropped": report.dropped,
        "dropped_text": report.dropped_text(),
        "otelproc_events": report.events,
        "otelproc_spans": report.spans,
        "still_running": report.still_running,
        "cpu_ms_per_1000": cpu / lifetimes * 1e6,
        "peak_rss_mb": max(s[1] for s in samples) / 2**20 if samples else float("nan"),
        "latency_p50_ms": percentile(latencies, 50) / 1e6,
        "latency_p99_ms": percentile(latencies, 99) / 1e6,
        "zero_loss": zero_loss,
        "warnings": report.other_warnings,
    }


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--lifetimes", type=int, help="matched lifetimes per storm (default 20000; --quick 2000)")
    p.add_argument("--jobs", type=int, help="driver workers (default: one per core)")
    args = p.parse_args()
    common.require_root()
    lifetimes = args.lifetimes or (2_000 if args.quick else 20_000)
    jobs = args.jobs or os.cpu_count() or 1
    out = common.out_dir(args)
    info = common.machine()
    programs = common.build()

    untraced = common.storm(programs, programs.matched, lifetimes, jobs)  # the machine's rate with no tracer
    receiver = Receiver(keep=True)
    trials: list[dict[str, Any]] = []
    try:
        trials.append(trial(programs, receiver, lifetimes, jobs, 0))
        full_rate = trials[0]["driver_rate"]
        for fraction in STEP_DOWN:
            if trials[-1]["zero_loss"]:
                break
            trials.append(trial(programs, receiver, lifetimes, jobs, fraction * full_rate))
    finally:
        receiver.stop()

    rows = [
        [
            "full" if t["asked_rate"] == "full" else f"{t['asked_rate']:,.0f}/s",
            t["driver_rate"],
            t["drain_s"],
            t["end_to_end_rate"],
            t["received"],
            t["lost_at_receiver"],
            t["dropped_text"],
            t["cpu_ms_per_1000"],
            t["peak_rss_mb"],
            t["latency_p50_ms"],
            t["latency_p99_ms"],
        ]
        for t in trials
    ]
    table = Table(
        "Matched lifetimes through one otelproc",
        [
            "rate asked",
            "driver rate /s",
            "last span after storm end s",
            "end-to-end rate /s",
            "spans received",
            "lost",
            "otelproc dropped",
            "otelproc CPU ms per 1,000",
            "peak RSS MB",
            "exit→receiver p50 ms",
            "p99 ms",
        ],
        rows,
        note=f"{lifetimes:,} lifetimes per trial, {jobs} driver workers; with no tracer the same storm ran at "
        f"{untraced.rate:,.0f}/s. End-to-end rate: lifetimes / (storm start "
        f"→ last span at the receiver). otelproc kept up when its last span came within {KEPT_UP_S} s of the "
        "storm's end (its batch delay is 1 s). A trial after the first is paced to a fraction of the full rate.",
    )
    full = trials[0]
    sustained = next((t for t in trials if t["zero_loss"]), None)
    sustained_text = (
        "none of the rates tried"
        if sustained is None
        else (
            f"{sustained['sustained_rate']:,.0f} lifetimes/s"
            + (
                " (kept up with the storm)"
                if sustained["drain_s"] <= KEPT_UP_S
                else " (its own rate; the storm was faster)"
            )
            + (" at the full rate" if sustained is full else " (paced storm)")
        )
    )
    targets = [
        Target(
            "zero loss at the machine's full matched exec rate",
            "0 lost",
            f"{full['lost_at_receiver']} lost at {full['driver_rate']:,.0f}/s; otelproc dropped "
            + full["dropped_text"],
            full["zero_loss"],
        ),
        Target("lifetimes/s sustained with zero loss", "report", sustained_text, False if sustained is None else None),
    ]
    common.write_results(
        out,
        "throughput",
        "Throughput and loss",
        info,
        {
            "lifetimes": lifetimes,
            "jobs": jobs,
            "tiny_program": "static" if programs.static else "dynamic",
            "otelproc": f"run --match {MATCHED} --adopt false, default batch settings, OTLP/gRPC to a local receiver",
        },
        [table],
        targets,
        {"untraced_rate": untraced.rate, "trials": trials},
    )


if __name__ == "__main__":
    main()
