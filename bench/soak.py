"""Soak: 100,000 tracked processes through one sidecar; its memory stays flat and nothing is lost.

Not a test (it takes minutes): one `otelproc run`, and a paced storm of matched lifetimes
(default 1,000/s, well under the full rate, so that what is checked is the long run, not
overload; bench/throughput.py checks the rate). RSS, CPU and the spans received are sampled
every second. At the end every process must have its span at the receiver, otelproc must
report no kernel loss and no full batch queue, and RSS after the first 10% of the run must
not grow by more than a few MB: a leak per process would show as a slope.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import common
from common import MATCHED, Otelproc, Receiver, RssSampler, Table, Target

FLAT_MB = 5.0  # growth of RSS from 10% of the run to its end that still counts as flat
TARGET_RSS_MB = 80
MB = 2**20


def slope_mb_per_100k(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS (MB) over spans received, per 100,000 spans."""
    if len(points) < 2:
        return float("nan")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in points) / var * 100_000 if var else float("nan")


def plot(samples: list[tuple[float, int, float, int]], path: Path) -> None:
    plt = common.pyplot()
    if plt is None or not samples:
        return
    t0 = samples[0][0]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([s[0] - t0 for s in samples], [s[1] / MB for s in samples], color="#1f77b4", label="RSS")
    ax.axhline(TARGET_RSS_MB, color="red", linestyle="dashed", label="RSS target")
    ax.set_xlabel("seconds")
    ax.set_ylabel("otelproc RSS (MB)")
    ax.set_ylim(0, max(TARGET_RSS_MB, max(s[1] for s in samples) / MB) * 1.15)
    spans = ax.twinx()
    spans.plot([s[0] - t0 for s in samples], [s[3] for s in samples], color="#2ca02c", label="spans received")
    spans.set_ylabel("spans received")
    lines = ax.get_legend_handles_labels()
    more = spans.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower right")
    ax.set_title("Soak: otelproc's memory while processes run through it")
    common.save_plot(fig, path)


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--lifetimes", type=int, help="matched processes to run (default 100000; --quick 5000)")
    p.add_argument("--rate", type=float, default=1000.0, help="lifetimes per second (default 1000; 0: full rate)")
    args = p.parse_args()
    common.require_root()
    lifetimes = args.lifetimes or (5_000 if args.quick else 100_000)
    jobs = os.cpu_count() or 1
    out = common.out_dir(args)
    info = common.machine()
    programs = common.build()

    receiver = Receiver()
    otelproc = Otelproc(MATCHED, receiver.endpoint)
    try:
        otelproc.wait_attached()
        sampler = RssSampler(otelproc.pid, 1.0, lambda: receiver.spans)
        result = common.storm(programs, programs.matched, lifetimes, jobs, args.rate)
        complete = receiver.wait_for(lifetimes, timeout=max(120.0, lifetimes / 100), idle=30)
        samples = sampler.stop()
        cpu, in_maps = otelproc.cpu_seconds(), common.bpf_map_rss_bytes(otelproc.pid) / MB
        report = otelproc.stop()
    finally:
        otelproc.kill()
        receiver.stop()

    received = receiver.spans
    warm = [(s[3], s[1] / MB) for s in samples if s[3] >= lifetimes // 10]
    growth = warm[-1][1] - warm[0][1] if warm else float("nan")
    slope = slope_mb_per_100k(warm)
    peak = max(s[1] for s in samples) / MB
    final = samples[-1][1] / MB
    table = Table(
        "Soak",
        ["what", "value"],
        [
            ["processes run", lifetimes],
            ["storm rate /s", result.rate],
            ["spans at the receiver", received],
            ["otelproc: events, spans, still running", f"{report.events}, {report.spans}, {report.still_running}"],
            ["otelproc dropped (kernel, queue, export)", report.dropped_text()],
            ["RSS after 10% of the run (MB)", warm[0][1] if warm else float("nan")],
            ["RSS at the end (MB)", final],
            ["RSS peak (MB)", peak],
            ["of the RSS at the end, BPF maps (the ring buffer, mapped twice) (MB)", in_maps],
            ["RSS growth after 10% of the run (MB)", growth],
            ["RSS slope after 10% (MB per 100,000 processes)", slope],
            ["otelproc CPU in all (s)", cpu],
        ],
        note="RSS sampled every second (VmRSS); the plot shows it against time with the spans received.",
    )
    targets = [
        Target(
            "spans at the receiver == processes run; loss counters 0",
            f"{lifetimes:,}; 0",
            f"{received:,}; dropped {report.dropped_text()}",
            complete and received == lifetimes and report.dropped_nothing,
        ),
        Target(
            "memory flat (RSS growth after 10% of the run)",
            f"<= {FLAT_MB} MB",
            f"{growth:+.1f} MB",
            abs(growth) <= FLAT_MB,
        ),
        Target(
            "RSS steady",
            f"<= {TARGET_RSS_MB} MB",
            f"{final:.1f} MB at the end ({in_maps:.1f} MB of it BPF maps)",
            final <= TARGET_RSS_MB,
        ),
    ]
    data: dict[str, Any] = {
        "samples": [{"t": s[0] - samples[0][0], "rss_mb": s[1] / MB, "cpu_s": s[2], "spans": s[3]} for s in samples],
        "report": vars(report),
    }
    common.write_results(
        out,
        "soak",
        "Soak: 100,000 processes through one sidecar",
        info,
        {
            "lifetimes": lifetimes,
            "rate": args.rate or "full",
            "jobs": jobs,
            "otelproc": f"run --match {MATCHED} --adopt false, OTLP/gRPC to a local receiver",
        },
        [table],
        targets,
        data,
    )
    plot(samples, out / "soak.png")


if __name__ == "__main__":
    main()
