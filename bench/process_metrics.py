"""Process metrics: what the Collector's spanmetrics connector costs per 1,000 lifetimes, and how many
series a storm of processes makes.

The Collector is the Jaeger binary of deploy/jaeger/build.sh running collector-config.yaml as shipped
(spanmetrics connector, prometheus exporter) or the same file with the connector taken out; it sends
the spans to a counting OTLP receiver in place of Jaeger. `otelproc run` matches the storm's program
and exports to the Collector. Rounds alternate the two configurations; each takes a storm of matched
lifetimes and reads the Collector's CPU time (utime+stime) from just before the storm until every span
has reached the receiver and the connector has flushed. After each storm with the connector, the
exporter's page is read as Prometheus scrapes it: the series of the storm's service, however many
processes it had. For the other design, the same metrics made by otelproc itself, the cost of the
Python SDK's instrument calls per lifetime is timed in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

import common
from common import MATCHED, JaegerService, Otelproc, Programs, Receiver, Table, Target, median

sys.path.insert(0, str(common.REPO / "tests"))  # free ports, as the tests choose them
from support.ports import free_ports  # noqa: E402

COLLECTOR_CONFIG = common.REPO / "collector-config.yaml"
JAEGER_BUILD = common.REPO / "deploy" / "jaeger" / "build.sh"
SERVICE = "otelproc"  # the storm's processes set no OTEL_SERVICE_NAME: otelproc's --service-name
FLUSH_S = 1.0  # the connector's flush interval here (15 s as shipped): the storm's metrics out at once
TARGET_SERIES = 100  # however many processes: a few per program and outcome, never one per process


def without_spanmetrics(config: dict[str, Any]) -> dict[str, Any]:
    """collector-config.yaml with the connector, its pipeline and its exporter taken out."""
    config = yaml.safe_load(yaml.safe_dump(config))
    del config["connectors"]
    del config["exporters"]["prometheus"]
    pipelines = config["service"]["pipelines"]
    del pipelines["metrics/spanmetrics"]
    pipelines["traces"]["exporters"].remove("spanmetrics")
    return config


def series_of(service: str, port: int) -> list[str]:
    """The span metrics of `service` on the exporter's page: one line per series."""
    page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return [
        line
        for line in page.splitlines()
        if line.startswith("traces_span_metrics_") and f'service_name="{service}"' in line
    ]


def one_storm(
    programs: Programs, receiver: Receiver, jaeger: str, config: Path, lifetimes: int, jobs: int, work: Path
) -> dict[str, Any]:
    """One Collector, one otelproc, one storm: the Collector's and otelproc's CPU over it, and the series
    on its exporter's page when the config has the connector."""
    grpc, http, telemetry, metrics = free_ports(4)
    env = {
        "COLLECTOR_LISTEN_HOST": "127.0.0.1",
        "COLLECTOR_OTLP_GRPC_PORT": str(grpc),
        "COLLECTOR_OTLP_HTTP_PORT": str(http),
        "COLLECTOR_TELEMETRY_PORT": str(telemetry),
        "COLLECTOR_PROMETHEUS_PORT": str(metrics),
        "COLLECTOR_SPANMETRICS_INTERVAL": f"{FLUSH_S:.0f}s",
        "JAEGER_OTLP_ENDPOINT": f"127.0.0.1:{receiver.port}",
    }
    collector = JaegerService(jaeger, config, env, work / f"collector-{config.stem}.log", grpc)
    otelproc = None
    try:
        receiver.reset()
        otelproc = Otelproc(MATCHED, f"http://127.0.0.1:{grpc}")
        otelproc.wait_attached()
        time.sleep(2)
        collector_before, otelproc_before = common.cpu_seconds(collector.proc.pid), otelproc.cpu_seconds()
        started = time.monotonic()
        result = common.storm(programs, programs.matched, lifetimes, jobs)
        complete = receiver.wait_for(lifetimes, timeout=max(120.0, lifetimes / 50), idle=20)
        time.sleep(FLUSH_S + 1)  # the connector's flush, in the figure
        collector_cpu = common.cpu_seconds(collector.proc.pid) - collector_before
        otelproc_cpu = otelproc.cpu_seconds() - otelproc_before
        wall = time.monotonic() - started
        has_connector = "connectors" in yaml.safe_load(config.read_text())  # not so after without_spanmetrics
        series = series_of(SERVICE, metrics) if has_connector else []
        otelproc.stop()
        return {
            "storm_rate": result.rate,
            "complete": complete,
            "spans": receiver.spans,
            "wall_s": wall,
            "collector_cpu_s": collector_cpu,
            "otelproc_cpu_s": otelproc_cpu,
            "series": len(series),
            "calls": sum(float(s.rsplit(" ", 1)[1]) for s in series if s.startswith("traces_span_metrics_calls")),
        }
    finally:
        if otelproc is not None:
            otelproc.kill()
        collector.stop()


def in_otelproc_us(lifetimes: int) -> float:
    """The other design's cost: µs per lifetime for otelproc to count a start and an end and record a
    lifetime with the Python SDK's instruments (the same dimensions as the connector's), in-process."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("otelproc")
    started, ended = meter.create_counter("process.started"), meter.create_counter("process.ended")
    lifetime = meter.create_histogram("process.lifetime", unit="s")
    program = {"service.name": "demo", "otelproc.program": "uvicorn worker"}
    ends = [{**program, "otelproc.exit.outcome": o, "error.type": e} for o, e in (("ok", ""), ("signal", "SIGKILL"))]
    begin = time.perf_counter()
    for i in range(lifetimes):
        started.add(1, program)
        ended.add(1, ends[i & 1])
        lifetime.record(1.5, ends[i & 1])
    return (time.perf_counter() - begin) / lifetimes * 1e6


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--lifetimes", type=int, help="matched lifetimes per storm (default 20000; --quick 500)")
    p.add_argument("--rounds", type=int, help="rounds of both configurations (default 3; --quick 1)")
    args = p.parse_args()
    common.require_root()
    lifetimes = args.lifetimes or (500 if args.quick else 20_000)
    rounds = args.rounds or (1 if args.quick else 3)
    jobs = os.cpu_count() or 1
    out = common.out_dir(args)
    info = common.machine()
    programs = common.build()
    jaeger = subprocess.run([str(JAEGER_BUILD)], capture_output=True, text=True, check=True).stdout.strip()

    work = Path(tempfile.mkdtemp(prefix="otelproc-process-metrics-"))
    shipped = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    configs = {"spans only": work / "spans-only.yaml", "with spanmetrics": work / "with-spanmetrics.yaml"}
    configs["spans only"].write_text(yaml.safe_dump(without_spanmetrics(shipped)))
    configs["with spanmetrics"].write_text(COLLECTOR_CONFIG.read_text())

    receiver = Receiver()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    try:
        for round_ in range(rounds):
            order = list(configs) if round_ % 2 == 0 else list(reversed(configs))
            for name in order:
                runs[name].append(one_storm(programs, receiver, jaeger, configs[name], lifetimes, jobs, work))
    finally:
        receiver.stop()

    in_otelproc = median(in_otelproc_us(lifetimes * 5) for _ in range(3))
    per_1000 = {name: median(r["collector_cpu_s"] for r in rs) / lifetimes * 1000 for name, rs in runs.items()}
    added_ms = (per_1000["with spanmetrics"] - per_1000["spans only"]) * 1000
    otelproc_ms = median(r["otelproc_cpu_s"] for rs in runs.values() for r in rs) / lifetimes * 1000 * 1000
    series = max(r["series"] for r in runs["with spanmetrics"])
    complete = all(r["complete"] for rs in runs.values() for r in rs)
    counted = all(r["calls"] >= lifetimes for r in runs["with spanmetrics"])
    table = Table(
        f"A storm of {lifetimes:,} lifetimes through the Collector, {rounds} rounds each",
        ["Collector", "storm rate /s", "Collector CPU s (median)", "Collector CPU ms per 1,000", "series"],
        [
            [
                name,
                median(r["storm_rate"] for r in rs),
                median(r["collector_cpu_s"] for r in rs),
                per_1000[name] * 1000,
                max(r["series"] for r in rs) if name == "with spanmetrics" else "-",
            ]
            for name, rs in runs.items()
        ],
        note=(
            "CPU: the Collector's utime+stime from just before the storm until every span reached the "
            f"receiver and the connector flushed ({common.CLK_TCK} ticks a second). Series: lines of "
            f'traces_span_metrics_* with service_name="{SERVICE}" on the exporter\'s page, as Prometheus '
            "scrapes it (calls, and the duration histogram's buckets, sum and count). "
            f"otelproc itself: {otelproc_ms:.0f} ms of CPU per 1,000 lifetimes in either configuration."
        ),
    )
    other = Table(
        "The other design: the same metrics made in otelproc",
        ["where", "CPU ms per 1,000 lifetimes"],
        [
            ["the Collector's spanmetrics connector (above, added)", added_ms],
            ["otelproc, the Python SDK's counters and histogram (3 calls a lifetime)", in_otelproc],
            ["otelproc's whole cost today, for scale (above)", otelproc_ms],
        ],
        note="µs per lifetime = ms per 1,000 lifetimes. The otelproc figure is the instrument calls alone, "
        f"in a loop of {lifetimes * 5:,} lifetimes (median of 3), before any export.",
    )
    targets = [
        Target(
            f"series for {lifetimes:,} processes of one program",
            f"<= {TARGET_SERIES}, not one per process",
            f"{series}",
            series <= TARGET_SERIES and complete and counted,
        ),
        Target("Collector CPU added by spanmetrics per 1,000 lifetimes", "report", f"{added_ms:.0f} ms", None),
    ]
    common.write_results(
        out,
        "process_metrics",
        "Process metrics in the Collector",
        info,
        {
            "lifetimes": lifetimes,
            "rounds": rounds,
            "jobs": jobs,
            "collector": "the Jaeger binary running collector-config.yaml, with and without spanmetrics",
            "spanmetrics_flush_s": FLUSH_S,
        },
        [table, other],
        targets,
        {"runs": runs, "complete": complete, "all_counted": counted, "in_otelproc_us_per_lifetime": in_otelproc},
    )


if __name__ == "__main__":
    main()
