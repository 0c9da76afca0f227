"""Many live processes: with 20,000 tracked at once, the ring-buffer reader never waits long.

Everything that grows with the number of live processes (the /proc sweep, the walk of the
kernel's tracked map, the state file) runs off the thread that reads the ring buffer; this
measures that it does. One `otelproc run` (state file on, a sweep every --sweep seconds,
/healthz on) watches `c/idle.c` processes (`otpidle`: they wait for a signal and do nothing)
being started until --processes of them are live, holds them for --hold seconds, then kills
them all. otelproc reports the longest time its reader spent away from the ring buffer between
two reads ("longest away" on its last line, also the gauge otelproc.ringbuf.away.max); /healthz
is asked every 0.5 s throughout, and otelproc's RSS sampled every second.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import common
from common import Otelproc, Receiver, RssSampler, Table, Target

IDLE = "otpidle"
TARGET_AWAY_MS = 50
MB = 2**20
RATE = 1000  # processes started, and later killed, per second: a steady arrival, not a burst


def build_idle() -> Path:
    target = common.WORK / IDLE
    common.WORK.mkdir(parents=True, exist_ok=True)
    if not common.compile_c(common.BENCH / "c" / "idle.c", target, "-static") and not common.compile_c(
        common.BENCH / "c" / "idle.c", target
    ):
        raise SystemExit("cc could not build bench/c/idle.c")
    return target


class HealthProbe:
    """GET /healthz every `every` seconds on a thread; counts answers other than 200."""

    def __init__(self, port: int, every: float = 0.5) -> None:
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.every = every
        self.asked = self.failed = 0
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    ok = answer.status == 200
            except OSError:
                ok = False
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.asked += 1
            self.failed += not ok

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pace(started: float, done: int, rate: float) -> None:
    ahead = started + done / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)


def run(program: Path, processes: int, hold_s: float, sweep_s: float, rate: float) -> dict[str, Any]:
    receiver = Receiver()
    state_dir = Path(tempfile.mkdtemp(prefix="otelproc-many-"))
    port = free_port()
    otelproc = Otelproc(
        IDLE,
        receiver.endpoint,
        "--sweep-interval",
        str(sweep_s),
        "--health-port",
        str(port),
        env={"OTELPROC_STATE_FILE": str(state_dir / "state.json"), "OTEL_METRICS_EXPORTER": "none"},
    )
    pids: list[int] = []
    try:
        otelproc.wait_attached()
        time.sleep(1)
        health = HealthProbe(port)
        sampler = RssSampler(otelproc.pid, 1.0)
        started = time.monotonic()
        for i in range(processes):
            pids.append(os.posix_spawn(str(program), [IDLE], {}))
            pace(started, i, rate)
        spawn_s = time.monotonic() - started
        # every process gets its 'started' span a second after its exec: then otelproc holds them all
        all_started = receiver.wait_for(processes, timeout=max(120.0, processes / 100), idle=30)
        tracked_s = time.monotonic() - started
        time.sleep(hold_s)
        state_bytes = (state_dir / "state.json").stat().st_size if (state_dir / "state.json").exists() else 0
        rss_live = otelproc.rss_bytes()
        killing = time.monotonic()
        for i, pid in enumerate(pids):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pace(killing, i, rate)
        pids.clear()
        all_ended = receiver.wait_for(2 * processes, timeout=max(120.0, processes / 100), idle=30)
        time.sleep(sweep_s * 2 + 1)  # sweeps over an empty table, the state file shrinks back
        rss_after = otelproc.rss_bytes()
        health.stop()
        samples = sampler.stop()
        report = otelproc.stop()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        otelproc.kill()
        receiver.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
    away = common.parse_away_ms(otelproc.stderr.text())
    return {
        "spawn_s": spawn_s,
        "tracked_s": tracked_s,
        "all_started": all_started,
        "all_ended": all_ended,
        "spans": report.spans,
        "dropped": report.dropped,
        "away_max_ms": away,
        "health_asked": health.asked,
        "health_failed": health.failed,
        "health_slowest_s": health.slowest,
        "rss_live_mb": rss_live / MB,
        "rss_after_mb": rss_after / MB,
        "rss_peak_mb": max((s[1] for s in samples), default=0) / MB,
        "state_file_mb": state_bytes / MB,
    }


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--processes", type=int, help="live tracked processes at once (default 20000; --quick 2000)")
    p.add_argument("--hold", type=float, help="seconds they stay live (default 30; --quick 6)")
    p.add_argument("--sweep", type=float, default=2.0, help="otelproc's --sweep-interval (default 2)")
    p.add_argument("--rate", type=float, default=RATE, help=f"processes started and killed per second (default {RATE})")
    args = p.parse_args()
    common.require_root()
    processes = args.processes or (2_000 if args.quick else 20_000)
    hold_s = args.hold or (6.0 if args.quick else 30.0)
    out = common.out_dir(args)
    info = common.machine()
    r = run(build_idle(), processes, hold_s, args.sweep, args.rate)
    away = r["away_max_ms"]
    table = Table(
        f"{processes:,} live tracked processes",
        ["what", "value"],
        [
            ["started in (s)", r["spawn_s"]],
            ["all 'started' spans at the receiver after (s)", r["tracked_s"]],
            ["longest away from the ring buffer, whole run (ms)", away if away is not None else "not reported"],
            ["/healthz answers (not 200)", f"{r['health_asked']} ({r['health_failed']})"],
            ["slowest /healthz answer (s)", r["health_slowest_s"]],
            ["RSS with all live (MB)", r["rss_live_mb"]],
            ["RSS peak (MB)", r["rss_peak_mb"]],
            ["RSS after they ended (MB)", r["rss_after_mb"]],
            ["state file with all live (MB)", r["state_file_mb"]],
            [
                "spans / dropped",
                f"{r['spans']} / {', '.join(f'{k}={v}' for k, v in r['dropped'].items() if v) or 'nothing'}",
            ],
        ],
        note=f"otelproc run --match {IDLE} --sweep-interval {args.sweep} --health-port, a state file, OTLP/gRPC to a "
        f"local receiver. Held {hold_s:.0f} s with all live (about {hold_s / args.sweep:.0f} sweeps and state-file "
        "writes), then all killed at once.",
    )
    targets = [
        Target(
            f"ring reader away, {processes:,} live",
            f"<= {TARGET_AWAY_MS} ms",
            f"{away} ms" if away is not None else "not reported",
            away is not None and away <= TARGET_AWAY_MS,
        ),
        Target(
            "/healthz green throughout",
            "every answer 200",
            f"{r['health_failed']} of {r['health_asked']} not",
            r["health_failed"] == 0 and r["health_asked"] > 0,
        ),
        Target(
            "every lifetime exported",
            f"{2 * processes:,} spans",
            f"{r['spans']}",
            bool(r["all_ended"]) and not any(r["dropped"].values()),
        ),
        Target("RSS with all live", "report", f"{r['rss_live_mb']:.0f} MB (after: {r['rss_after_mb']:.0f} MB)", None),
    ]
    common.write_results(
        out,
        "many_live",
        "Many live processes: the ring-buffer reader under a large table",
        info,
        {"processes": processes, "hold_s": hold_s, "sweep_s": args.sweep, "rate": args.rate},
        [table],
        targets,
        r,
    )


if __name__ == "__main__":
    main()
