"""Latency: from a process's exit to its span at the receiver, with otelproc's default settings.

A paced storm (default 100 matched lifetimes/s for 30 s: a steady trickle, not a flood) runs
through `otelproc run` with nothing but --match set. The receiver notes when each export request
arrives; a lifetime span ends at the exit's kernel timestamp, so arrival minus end time is the
delay a user sees, both read from the same wall clock. With the defaults that delay is mostly
the batch processor's schedule (1 s in otelproc) plus the ring buffer's poll (100 ms).
"""

from __future__ import annotations

from pathlib import Path

import common
from common import MATCHED, Otelproc, Receiver, Table, Target, percentile

TARGET_P99_S = 1.5


def plot(latencies_ms: list[float], path: Path) -> None:
    plt = common.pyplot()
    if plt is None:
        return
    ordered = sorted(latencies_ms)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], color="#1f77b4")
    for p, style in ((50, ":"), (95, "--"), (99, "-.")):
        value = percentile(ordered, p)
        ax.axvline(value, color="gray", linestyle=style, label=f"p{p} {value:.0f} ms")
    ax.axvline(TARGET_P99_S * 1000, color="red", linestyle="dashed", label="p99 target")
    ax.set_xlabel("exit → span at the receiver (ms)")
    ax.set_ylabel("fraction of spans")
    ax.set_title("Export latency with otelproc's default settings")
    ax.legend(fontsize=8)
    common.save_plot(fig, path)


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=100.0, help="matched lifetimes per second (default 100)")
    p.add_argument("--seconds", type=float, help="how long the trickle runs (default 30; --quick 3)")
    args = p.parse_args()
    common.require_root()
    seconds = args.seconds or (3.0 if args.quick else 30.0)
    lifetimes = max(1, round(args.rate * seconds))
    out = common.out_dir(args)
    info = common.machine()
    programs = common.build()

    receiver = Receiver(keep=True)
    otelproc = Otelproc(MATCHED, receiver.endpoint)
    try:
        otelproc.wait_attached()
        result = common.storm(programs, programs.matched, lifetimes, 1, args.rate)
        complete = receiver.wait_for(lifetimes, timeout=60, idle=15)
        report = otelproc.stop()
    finally:
        otelproc.kill()
        receiver.stop()

    latencies = [ns / 1e6 for ns in receiver.latencies_ns()]
    p50, p95, p99 = (percentile(latencies, q) for q in (50, 95, 99))
    table = Table(
        "Exit → span at the receiver",
        ["lifetimes", "spans received", "p50 ms", "p95 ms", "p99 ms", "max ms", "min ms"],
        [
            [
                lifetimes,
                len(latencies),
                p50,
                p95,
                p99,
                max(latencies, default=float("nan")),
                min(latencies, default=float("nan")),
            ]
        ],
        note=f"{lifetimes:,} matched lifetimes paced at {result.rate:,.0f}/s; otelproc with its defaults "
        f"(batch schedule delay 1 s, ring buffer polled every 100 ms); {report.events} events, {report.spans} spans, "
        f"otelproc dropped {report.dropped_text()}.",
    )
    targets = [
        Target("p99 exit → receiver", f"<= {TARGET_P99_S} s", f"{p99 / 1000:.3f} s", p99 / 1000 <= TARGET_P99_S),
        Target("every span arrived", f"{lifetimes:,}", f"{len(latencies):,}", complete and len(latencies) == lifetimes),
    ]
    common.write_results(
        out,
        "latency",
        "Latency: exit → span at the receiver",
        info,
        {
            "rate": args.rate,
            "seconds": seconds,
            "otelproc": f"run --match {MATCHED} --adopt false (defaults otherwise)",
        },
        [table],
        targets,
        {"latencies_ms": latencies},
    )
    plot(latencies, out / "latency.png")


if __name__ == "__main__":
    main()
