"""Footprint and start: launch to attached and to first export, RSS idle and under a storm, idle CPU.

Start: `otelproc run` is launched several times; "attached" on its stderr marks the probe in
the kernel, and one matched lifetime run right then marks the first export when its span
reaches the receiver (that includes the batch processor's 1 s schedule). Then one otelproc
sits idle for --idle seconds (nothing it matches runs) while its CPU and RSS are read, and
takes a full-rate matched storm while its RSS is sampled every 100 ms, and a few seconds
after, when it has settled again (the steady figure the target is about).
"""

from __future__ import annotations

import os
import time
from typing import Any

import common
from common import MATCHED, Otelproc, Programs, Receiver, RssSampler, Table, Target, median

TARGET_ATTACHED_S = 0.5
TARGET_RSS_MB = 80
TARGET_IDLE_CPU_PCT = 0.5
MB = 2**20


def start_once(programs: Programs, receiver: Receiver) -> dict[str, Any]:
    """One launch: seconds to attached, to the first span at the receiver, and RSS once idle."""
    receiver.reset()
    otelproc = Otelproc(MATCHED, receiver.endpoint)
    try:
        attached = otelproc.wait_attached()
        common.storm(programs, programs.matched, 1)
        exported = None
        if receiver.wait_for(1, timeout=30):
            exported = (receiver.arrivals[0][0] - otelproc.launched_wall_ns) / 1e9
        time.sleep(2)
        rss, in_maps = otelproc.rss_bytes(), common.bpf_map_rss_bytes(otelproc.pid)
        otelproc.stop()
    finally:
        otelproc.kill()
    return {"attached_s": attached, "first_export_s": exported, "rss_idle_mb": rss / MB, "bpf_maps_mb": in_maps / MB}


def idle_and_storm(
    programs: Programs, receiver: Receiver, idle_s: float, lifetimes: int, jobs: int, settle_s: float
) -> dict[str, Any]:
    """One otelproc: CPU and RSS over an idle stretch, then RSS through a storm and after it."""
    receiver.reset()
    otelproc = Otelproc(MATCHED, receiver.endpoint)
    try:
        otelproc.wait_attached()
        time.sleep(settle_s)
        cpu_before, wall_before = otelproc.cpu_seconds(), time.monotonic()
        sampler = RssSampler(otelproc.pid, 1.0)
        time.sleep(idle_s)
        cpu, wall = otelproc.cpu_seconds() - cpu_before, time.monotonic() - wall_before
        idle_samples = sampler.stop()

        sampler = RssSampler(otelproc.pid, 0.1)
        result = common.storm(programs, programs.matched, lifetimes, jobs)
        complete = receiver.wait_for(lifetimes, timeout=max(120.0, lifetimes / 100), idle=15)
        storm_samples = sampler.stop()
        time.sleep(settle_s)
        steady, in_maps = otelproc.rss_bytes(), common.bpf_map_rss_bytes(otelproc.pid)
        report = otelproc.stop()
    finally:
        otelproc.kill()
    return {
        "idle_s": wall,
        "idle_cpu_s": cpu,
        "idle_cpu_pct": cpu / wall * 100,
        "idle_rss_mb": [s[1] / MB for s in idle_samples],
        "storm_rate": result.rate,
        "storm_complete": complete and report.spans == lifetimes,
        "storm_rss_mb": [s[1] / MB for s in storm_samples],
        "steady_rss_mb": steady / MB,
        "steady_bpf_maps_mb": in_maps / MB,
    }


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--idle", type=float, help="seconds of idle to measure CPU over (default 60; --quick 5)")
    p.add_argument("--starts", type=int, help="launches to time (default 5; --quick 2)")
    p.add_argument("--lifetimes", type=int, help="matched lifetimes in the storm (default 20000; --quick 2000)")
    args = p.parse_args()
    common.require_root()
    idle_s = args.idle or (5.0 if args.quick else 60.0)
    starts = args.starts or (2 if args.quick else 5)
    lifetimes = args.lifetimes or (2_000 if args.quick else 20_000)
    jobs = os.cpu_count() or 1
    settle_s = 1.0 if args.quick else 5.0
    out = common.out_dir(args)
    info = common.machine()
    programs = common.build()

    receiver = Receiver()
    try:
        launches = [start_once(programs, receiver) for _ in range(starts)]
        run = idle_and_storm(programs, receiver, idle_s, lifetimes, jobs, settle_s)
    finally:
        receiver.stop()

    attached = median(s["attached_s"] for s in launches)
    exported = [s["first_export_s"] for s in launches if s["first_export_s"] is not None]
    rss_idle = median(s["rss_idle_mb"] for s in launches)
    peak = max(run["storm_rss_mb"], default=float("nan"))
    start_table = Table(
        "Start",
        ["launch", "to attached s", "to first span at the receiver s", "RSS idle MB", "of it BPF maps MB"],
        [
            [
                i + 1,
                s["attached_s"],
                s["first_export_s"] if s["first_export_s"] is not None else "never",
                s["rss_idle_mb"],
                s["bpf_maps_mb"],
            ]
            for i, s in enumerate(launches)
        ],
        note="From the launch of `python -m otelproc run` (interpreter start and imports included). The first span "
        "is of one matched lifetime run as soon as otelproc said 'attached'.",
    )
    use_table = Table(
        "Resources",
        ["what", "value"],
        [
            [f"idle CPU over {run['idle_s']:.0f} s (%)", run["idle_cpu_pct"]],
            ["RSS idle, median of launches (MB)", rss_idle],
            [f"RSS peak under a {lifetimes:,}-lifetime storm at {run['storm_rate']:,.0f}/s (MB)", peak],
            [f"RSS {settle_s:.0f} s after the storm (MB)", run["steady_rss_mb"]],
            ["of it, BPF maps mapped into otelproc (MB)", run["steady_bpf_maps_mb"]],
        ],
        note="CPU: utime+stime of the otelproc process over the idle stretch (clock-tick resolution, "
        f"{1000 // common.CLK_TCK} ms). RSS: VmRSS, which counts the ring buffer's pages (kernel memory, "
        "allocated whole when the map is created) as many times as they are mapped: twice.",
    )
    steady = max(rss_idle, run["steady_rss_mb"])
    maps = median(s["bpf_maps_mb"] for s in launches) if steady == rss_idle else run["steady_bpf_maps_mb"]
    targets = [
        Target(
            "launch → attached (median)",
            f"<= {TARGET_ATTACHED_S} s",
            f"{attached:.3f} s",
            attached <= TARGET_ATTACHED_S,
        ),
        Target(
            "launch → first export (median)",
            "report",
            f"{median(exported):.3f} s" if exported else "never",
            None if exported else False,
        ),
        Target(
            "RSS steady (idle, and after the storm)",
            f"<= {TARGET_RSS_MB} MB",
            f"{steady:.1f} MB ({maps:.1f} MB of it BPF map mappings)",
            steady <= TARGET_RSS_MB,
        ),
        Target(
            "idle CPU",
            f"< {TARGET_IDLE_CPU_PCT}%",
            f"{run['idle_cpu_pct']:.3f}%",
            run["idle_cpu_pct"] < TARGET_IDLE_CPU_PCT,
        ),
    ]
    common.write_results(
        out,
        "footprint",
        "Footprint and start",
        info,
        {
            "starts": starts,
            "idle_s": idle_s,
            "storm_lifetimes": lifetimes,
            "storm_jobs": jobs,
            "otelproc": f"run --match {MATCHED} --adopt false, OTLP/gRPC to a local receiver",
        },
        [start_table, use_table],
        targets,
        {"launches": launches, **run},
    )


if __name__ == "__main__":
    main()
