"""The span path in isolation: CPU per process lifetime from ring-buffer record to OTLP bytes.

Synthetic records, built with the shipped object's struct event layout the way the kernel writes them (an
exec, then an exit, per process), go through otelproc's own stages: decoder.decode,
tracker.Tracker, spans.SpanBuilder, and a BatchSpanProcessor whose exporter serializes each
batch with the OTLP encoder (encode_spans(...).SerializeToString()) but sends nothing. No
kernel, no network, no receiver: what is left is the Python cost otelproc pays per lifetime,
which bounds the exec rate one core can keep up with.

Two kinds of process: "storm", the tiny program of the other benchmarks (short argv, empty
environment), and "service", a uvicorn under python3 in a container (longer argv, a 2 KB
environment with OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, a docker cgroup). Each is
timed whole (process CPU time, every thread) and stage by stage, and the service path is
profiled with cProfile, the batch processor's export thread included.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
from common import REPO, Table, Target

sys.path.insert(0, str(REPO))  # otelproc from this tree, whatever copy may be installed

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from otelproc.sidecar.cgroups import CgroupPaths
from otelproc.clock import BootClock
from otelproc.kernel.decoder import decode, default_layout
from otelproc.kernel.record import KERNEL_KINDS
from otelproc.model import EventKind
from otelproc.otel.spans import SpanBuilder, host_attributes
from otelproc.sidecar.tracker import Tracker

TARGET_US = 50.0
BATCH = 512  # the SDK's default export batch
SERVICE_ENV = [
    f"{k}={v}"
    for k, v in {
        "PATH": "/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin",
        "HOME": "/home/app",
        "LANG": "C.UTF-8",
        "HOSTNAME": "shop-7d9f8c6b5-x2k4q",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OTEL_SERVICE_NAME": "shop",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.version=1.4.2",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4317",
        "DATABASE_URL": "postgresql://db:5432/shop",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "GPG_KEY": "A035C8C19219BA821ECEA86B",
        **{f"SHOP_SETTING_{i}": "x" * 48 for i in range(24)},
    }.items()
]
KINDS: dict[str, dict[str, Any]] = {
    "storm": {
        "comm": common.MATCHED,
        "exe": str(common.WORK / common.MATCHED),
        "argv": [str(common.WORK / common.MATCHED)],
        "env": [],
        "cgroup": "",
        "cgroup_id": 1,
    },
    "service": {
        "comm": "python3",
        "exe": "/usr/local/bin/python3.11",
        "argv": ["python3", "-m", "uvicorn", "shop.app:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"],
        "env": SERVICE_ENV,
        "cgroup": "docker-" + "3f" * 32 + ".scope",
        "cgroup_id": 1,
    },
}


KIND_NUMBER = {kind: number for number, kind in KERNEL_KINDS.items()}


def _record(**fields: Any) -> bytes:
    """One ring-buffer record: the header as the shipped object's struct event lays it out, then data[]."""
    return default_layout().pack(**fields)


# What a short python run uses, as an exit record carries it: the span path encodes what is not zero.
EXIT_USAGE = dict(
    cpu_ns=21_000_000, utime_ns=16_000_000, stime_ns=4_000_000, maxrss_pages=2_400, min_flt=1_150, nvcsw=2, nivcsw=3
)


def records(kind: str, count: int, first_pid: int = 100_000) -> list[bytes]:
    """An exec and an exit record for each of `count` distinct processes."""
    spec = KINDS[kind]
    exe = spec["exe"].encode() + b"\0"
    argv = b"".join(a.encode() + b"\0" for a in spec["argv"])
    env = b"".join(e.encode() + b"\0" for e in spec["env"])
    boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    out = []
    for i in range(count):
        pid = first_pid + i % 3_000_000
        start = boot + i * 1_000_000  # a tick apart at most every 10 processes; (pid, start) stays unique
        common_fields = dict(
            start_time_ns=start,
            cgroup_id=spec["cgroup_id"],
            pid=pid,
            ppid=1,
            tid=pid,
            vpid=pid,
            pidns=0xEFFFFFFC,
            uid=0,
            gid=0,
            comm=spec["comm"].encode(),
            cgroup=spec["cgroup"].encode(),
        )
        out.append(
            _record(
                time_ns=start + 50_000,
                kind=KIND_NUMBER[EventKind.EXEC],
                exe_len=len(exe),
                argv_len=len(argv),
                env_len=len(env),
                data=exe + argv + env,
                **common_fields,
            )
        )
        out.append(
            _record(
                time_ns=start + 900_000, kind=KIND_NUMBER[EventKind.EXIT], exit_code=0, **EXIT_USAGE, **common_fields
            )
        )
    return out


class EncodingExporter(SpanExporter):
    """Serializes every batch as the OTLP exporters do before sending, and sends nothing."""

    def __init__(self, profile: cProfile.Profile | None = None) -> None:
        self.profile = profile
        self.spans = 0
        self.bytes = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.profile is not None:
            self.profile.enable()  # in the thread that exports: the processor's worker, or a flush
        try:
            self.bytes += len(encode_spans(spans).SerializeToString())
            self.spans += len(spans)
        finally:
            if self.profile is not None:
                self.profile.disable()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class Pipeline:
    """otelproc's stages wired as `otelproc run` wires them, minus the kernel and the network."""

    def __init__(self, lifetimes: int, exporter: EncodingExporter) -> None:
        self.clock = BootClock()
        self.tracker = Tracker(65536, 1_000_000_000)
        self.builder = SpanBuilder("otelproc", host_attributes())
        self.cgroups = CgroupPaths()
        # Room for every span: a tight loop outruns the export thread, and a dropped span would be work not measured.
        self.processor = BatchSpanProcessor(exporter, max_queue_size=max(2048, lifetimes), schedule_delay_millis=1000)
        self.exporter = exporter

    def feed(self, raws: list[bytes]) -> None:
        """What the sidecar's ring-buffer callback does with each record."""
        clock, tracker, builder, cgroups = self.clock, self.tracker, self.builder, self.cgroups
        processor = self.processor
        for raw in raws:
            ended = tracker.handle(decode(raw, clock))
            if ended is not None:
                processor.on_end(builder.lifetime(ended, cgroups.path(ended.process.cgroup_id)))


def whole(kind: str, lifetimes: int) -> dict[str, float]:
    """CPU and wall time of the whole path, until the last span is serialized."""
    raws = records(kind, lifetimes)
    path = Pipeline(lifetimes, EncodingExporter())
    cpu, wall = time.process_time_ns(), time.perf_counter_ns()
    path.feed(raws)
    path.processor.force_flush()
    cpu, wall = time.process_time_ns() - cpu, time.perf_counter_ns() - wall
    path.processor.shutdown()
    if path.exporter.spans != lifetimes:
        raise RuntimeError(f"{lifetimes - path.exporter.spans} spans went missing on the path")
    return {
        "cpu_us": cpu / lifetimes / 1000,
        "wall_us": wall / lifetimes / 1000,
        "otlp_bytes_per_span": path.exporter.bytes / lifetimes,
    }


def stages(kind: str, lifetimes: int) -> dict[str, float]:
    """Each stage on its own, on the previous stage's output: µs of CPU per lifetime."""
    raws = records(kind, lifetimes)
    path = Pipeline(lifetimes, EncodingExporter())
    out: dict[str, float] = {}

    def timed(name: str, work: Any) -> Any:
        start = time.process_time_ns()
        result = work()
        out[name] = (time.process_time_ns() - start) / lifetimes / 1000
        return result

    events = timed("decode (exec + exit record)", lambda: [decode(raw, path.clock) for raw in raws])
    ended = timed("tracker (exec + exit)", lambda: [e for e in map(path.tracker.handle, events) if e is not None])
    spans = timed(
        "span (SpanBuilder.lifetime + cgroup path)",
        lambda: [path.builder.lifetime(e, path.cgroups.path(e.process.cgroup_id)) for e in ended],
    )
    timed(
        "OTLP encode + serialize",
        lambda: [len(encode_spans(spans[i : i + BATCH]).SerializeToString()) for i in range(0, len(spans), BATCH)],
    )
    path.processor.shutdown()
    return out


def profile(kind: str, lifetimes: int, out_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """cProfile of the whole path, the export thread's work merged in; top functions both ways."""
    raws = records(kind, lifetimes)
    export_profile = cProfile.Profile()
    path = Pipeline(lifetimes, EncodingExporter(export_profile))
    main_profile = cProfile.Profile()
    main_profile.enable()
    path.feed(raws)
    main_profile.disable()  # a flush exports in this thread, under the exporter's own profile
    path.processor.force_flush()
    path.processor.shutdown()
    stats = pstats.Stats(main_profile).add(export_profile)

    text = io.StringIO()
    text.write(
        f"cProfile of the span path ({kind} processes, {lifetimes:,} lifetimes; the batch processor's "
        f"export thread merged in). Times are profiled, so inflated; compare them with each other.\n\n"
    )
    for key in ("cumulative", "tottime"):
        stats.stream = text
        text.write(f"==== by {key} ====\n")
        stats.sort_stats(key).print_stats(30)
    (out_dir / "span_path_profile.txt").write_text(_shorten(text.getvalue()))

    def top(index: int) -> list[dict[str, Any]]:
        rows = sorted(stats.stats.items(), key=lambda item: item[1][index], reverse=True)[:10]
        return [
            {
                "function": _shorten(f"{file}:{line}({name})"),
                "calls": calls,
                "own_us_per_lifetime": own / lifetimes * 1e6,
                "cumulative_us_per_lifetime": cum / lifetimes * 1e6,
            }
            for (file, line, name), (_prim, calls, own, cum, _callers) in rows
        ]

    return top(3), top(2)


def _shorten(text: str) -> str:
    """Paths relative to site-packages or the repository, so the profile reads the same anywhere."""
    prefixes = {p for p in sys.path if p.endswith("site-packages")} | {str(REPO), sysconfig.get_paths()["stdlib"]}
    for prefix in sorted(prefixes, key=len, reverse=True):
        text = text.replace(prefix + "/", "")
    return text


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--lifetimes", type=int, help="lifetimes per measurement (default 20000; --quick 2000)")
    p.add_argument("--repeat", type=int, help="whole-path measurements per kind (default 5; --quick 2)")
    args = p.parse_args()
    lifetimes = args.lifetimes or (2_000 if args.quick else 20_000)
    repeat = args.repeat or (2 if args.quick else 5)
    out = common.out_dir(args)
    info = common.machine()

    whole("service", min(lifetimes, 2_000))  # warm-up: imports, caches, the first Resource
    results: dict[str, Any] = {}
    for kind in KINDS:
        runs = [whole(kind, lifetimes) for _ in range(repeat)]
        cpu = [r["cpu_us"] for r in runs]
        results[kind] = {"runs": runs, "cpu_us": statistics.median(cpu), "stages": stages(kind, lifetimes)}
    by_cumulative, by_own = profile("service", min(lifetimes, 10_000), out)

    whole_table = Table(
        "Whole path: record → decode → tracker → span → batch processor → OTLP bytes",
        [
            "process kind",
            "CPU µs per lifetime (median)",
            "min",
            "max",
            "wall µs per lifetime",
            "lifetimes/s on one core",
            "OTLP bytes per span",
        ],
        [
            [
                kind,
                res["cpu_us"],
                min(r["cpu_us"] for r in res["runs"]),
                max(r["cpu_us"] for r in res["runs"]),
                statistics.median(r["wall_us"] for r in res["runs"]),
                1e6 / res["cpu_us"],
                res["runs"][0]["otlp_bytes_per_span"],
            ]
            for kind, res in results.items()
        ],
        note=f"{lifetimes:,} lifetimes per run, {repeat} runs; CPU is the process's (every thread's) CPU time.",
    )
    stage_names = list(next(iter(results.values()))["stages"])
    stage_table = Table(
        "Stage by stage (CPU µs per lifetime)",
        ["stage", *KINDS],
        [
            *([name, *(results[k]["stages"][name] for k in KINDS)] for name in stage_names),
            ["sum of the stages", *(sum(results[k]["stages"].values()) for k in KINDS)],
        ],
        note="Each stage timed alone over all lifetimes; the whole path also pays the batch processor's queue and "
        "thread hand-off, and garbage collection.",
    )
    profile_tables = [
        Table(
            f"Profile, top 10 by {label} (service processes; µs per lifetime, under cProfile)",
            ["function", "calls", "own µs", "cumulative µs"],
            [
                [f"`{r['function']}`", r["calls"], r["own_us_per_lifetime"], r["cumulative_us_per_lifetime"]]
                for r in rows
            ],
        )
        for label, rows in (("cumulative time", by_cumulative), ("own time", by_own))
    ]
    targets = [
        Target(
            f"CPU per lifetime, {kind} processes",
            f"<= {TARGET_US:.0f} µs",
            f"{res['cpu_us']:.1f} µs",
            res["cpu_us"] <= TARGET_US,
        )
        for kind, res in results.items()
    ]
    common.write_results(
        out,
        "span_path",
        "The span path in isolation",
        info,
        {"lifetimes": lifetimes, "repeat": repeat, "profile": "span_path_profile.txt"},
        [whole_table, stage_table, *profile_tables],
        targets,
        {"results": results, "profile_by_cumulative": by_cumulative, "profile_by_own": by_own},
    )


if __name__ == "__main__":
    main()
