"""Churn: two long-lived masters that recycle their workers as fast as this machine sustains, for ten minutes.

gunicorn (4 sync workers, `--max-requests 1 --max-requests-jitter 2`) under a load generator, and a Celery
prefork worker (`-c 2 --max-tasks-per-child 1`) fed tasks through Redis, both at once, both tracked by one
`otelproc run` with its defaults (`--trace-spans 1000`) exporting to Jaeger (all-in-one, in memory, with
the Jaeger UI). Each service notes every worker process it starts (gunicorn's post_fork hook, Celery's
worker_process_init), and at the end Jaeger must hold each of those processes' process span exactly once.

Reported: generations and their rate; the largest trace; headless Chromium's time to draw the master's trace
and its newest worker's in the Jaeger UI; otelproc's RSS over the run (flat?) and its CPU per 1,000
generations; otelproc's own account of what it dropped.
"""

from __future__ import annotations

import collections
import datetime
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

import common
from common import Otelproc, RssSampler, Table, Target

sys.path.insert(0, str(common.REPO / "tests"))  # Jaeger's API and UI as the tests read them, and free ports
from support.jaeger import JaegerSpan, flatten, process_spans, rfc3339, stop_process  # noqa: E402
from support.jaeger_ui import JaegerUI, require_browser  # noqa: E402
from support.ports import free_ports  # noqa: E402
from support.subjects import python_named  # noqa: E402

APPS = common.BENCH / "apps"
JAEGER = common.REPO / "deploy" / "jaeger"
SUBJECT = "otpchurn"  # the services' interpreter, under a name of its own: the benchmark's python is not tracked
BOUND = 1000  # otelproc's default --trace-spans
RENDER_TARGET_S = 2.0
FLAT_MB = 5.0
MB = 2**20


def printed_path(script: Path) -> str:
    result = subprocess.run([str(script), "--print-path"], capture_output=True, text=True)
    if result.returncode != 0 or not result.stdout.strip():
        raise SystemExit(f"{script.name} has nothing built: run ./install.sh --test")
    return result.stdout.strip()


class Service:
    """One churning master: its command, the file its workers note their pids in, its process."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], scratch: Path) -> None:
        self.name = name
        self.pids_file = scratch / f"{name}.pids"
        self.pids_file.write_text("")
        self.log = (scratch / f"{name}.log").open("wb")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELPROC_", "TRACE"))}
        full_env.update(env, OTEL_SERVICE_NAME=name, CHURN_PIDS=str(self.pids_file))
        self.proc = subprocess.Popen(argv, cwd=APPS, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)

    def generations(self) -> list[int]:
        return [int(line) for line in self.pids_file.read_text().split()]

    def stop(self) -> None:
        stop_process(self.proc, timeout=60)
        self.log.close()


def load_gunicorn(port: int, stop: threading.Event, answered: list[int]) -> None:
    """Requests one after another on fresh connections; a worker that ends after its last request may
    drop the next one: that is retried, not counted."""
    while not stop.is_set():
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=10, headers={"Connection": "close"})
            answered[0] += 1
        except httpx.HTTPError:
            time.sleep(0.01)


def load_celery(redis_url: str, stop: threading.Event, sent: list[int]) -> None:
    """Keeps a short queue in Redis: a pool process takes one task and is replaced."""
    import redis
    from celery import Celery

    broker = redis.Redis.from_url(redis_url)
    client = Celery("churn_tasks", broker=redis_url)
    while not stop.is_set():
        if broker.llen("celery") < 8:
            client.send_task("churn_tasks.work")
            sent[0] += 1
        else:
            time.sleep(0.005)


def stored_spans(query_url: str, service: str, since: datetime.datetime, until: datetime.datetime) -> list[JaegerSpan]:
    """Every span of the service's traces in Jaeger, trace by trace as stored (a trace met in two windows
    of the search is taken once), in 10-second windows: a search returns a bounded number of traces."""
    by_trace: dict[str, list[JaegerSpan]] = {}
    start = since - datetime.timedelta(seconds=5)
    while start < until:
        end = start + datetime.timedelta(seconds=10)
        response = httpx.get(
            f"{query_url}/api/v3/traces",
            timeout=60,
            params={
                "query.service_name": service,
                "query.start_time_min": rfc3339(start),
                "query.start_time_max": rfc3339(end),
                "query.num_traces": 10000,
                "query.raw_traces": "true",
            },
        )
        if response.status_code != 404:
            response.raise_for_status()
            for trace_id, spans in _group(flatten(response.json()["result"])).items():
                by_trace.setdefault(trace_id, spans)
        start = end
    return [span for spans in by_trace.values() for span in spans]


def _group(spans: list[JaegerSpan]) -> dict[str, list[JaegerSpan]]:
    grouped: dict[str, list[JaegerSpan]] = collections.defaultdict(list)
    for span in spans:
        grouped[span.trace_id].append(span)
    return grouped


def render_seconds(ui: JaegerUI, trace_id: str, rounds: int = 3) -> float:
    """Median time from asking the browser for the trace's page to its timeline's first rows drawn."""
    times = []
    for _ in range(rounds):
        ui.driver.get("about:blank")
        began = time.monotonic()
        ui.driver.get(f"{ui.base_url}/trace/{trace_id}")
        ui.wait(lambda: ui.find(".span-row") and ui.find(".TracePageHeader"), f"trace {trace_id} drawn", timeout=60)
        times.append(time.monotonic() - began)
    return common.median(times)


def run(duration: float, scratch: Path) -> dict[str, Any]:
    jaeger_binary = printed_path(JAEGER / "build.sh")
    ui_assets = printed_path(JAEGER / "build-ui.sh")
    require_browser()
    python = python_named(scratch / "venv", SUBJECT)
    otlp_grpc, otlp_http, query_http, query_grpc, redis_port, web_port = free_ports(6)
    jaeger = common.JaegerService(
        jaeger_binary,
        JAEGER / "all-in-one.yaml",
        {
            "JAEGER_LISTEN_HOST": "127.0.0.1",
            "JAEGER_OTLP_GRPC_PORT": str(otlp_grpc),
            "JAEGER_OTLP_HTTP_PORT": str(otlp_http),
            "JAEGER_QUERY_HTTP_PORT": str(query_http),
            "JAEGER_QUERY_GRPC_PORT": str(query_grpc),
            "JAEGER_UI_ASSETS": ui_assets,
        },
        scratch / "jaeger.log",
        query_http,
    )
    query_url = f"http://127.0.0.1:{query_http}"
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    redis_server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
        + ["--save", "", "--appendonly", "no", "--dir", str(scratch)],
        stdout=subprocess.DEVNULL,
    )
    otelproc = Otelproc(SUBJECT, f"http://127.0.0.1:{otlp_grpc}")
    services: list[Service] = []
    stop_load = threading.Event()
    loaders: list[threading.Thread] = []
    try:
        otelproc.wait_attached()
        since = datetime.datetime.now(datetime.timezone.utc)
        gunicorn = Service(
            "churn-gunicorn",
            [python, "-m", "gunicorn", "-w", "4", "-k", "sync", "--max-requests", "1", "--max-requests-jitter", "2"]
            + ["-c", "churn_gunicorn.conf.py", "-b", f"127.0.0.1:{web_port}", "churn_wsgi:app"],
            {},
            scratch,
        )
        celery = Service(
            "churn-celery",
            [python, "-m", "celery", "-A", "churn_tasks", "worker", "--pool", "prefork", "-c", "2"]
            + ["--max-tasks-per-child", "1", "--without-heartbeat", "--without-mingle", "--without-gossip"]
            + ["--loglevel", "warning"],
            {"CHURN_REDIS": redis_url},
            scratch,
        )
        services = [gunicorn, celery]
        answered, sent = [0], [0]
        loaders = [threading.Thread(target=load_gunicorn, args=(web_port, stop_load, answered)) for _ in range(4)]
        loaders.append(threading.Thread(target=load_celery, args=(redis_url, stop_load, sent)))
        sampler = RssSampler(otelproc.pid, every=5, count=lambda: sum(len(s.generations()) for s in services))
        cpu_before = otelproc.cpu_seconds()
        began = time.monotonic()
        for loader in loaders:
            loader.start()
        time.sleep(duration)
        stop_load.set()
        for loader in loaders:
            loader.join(30)
        elapsed = time.monotonic() - began
        cpu_during = otelproc.cpu_seconds() - cpu_before
        samples = sampler.stop()
        masters = {s.name: s.proc.pid for s in services}
        for service in services:
            service.stop()
        until = datetime.datetime.now(datetime.timezone.utc)
        generations = {s.name: s.generations() for s in services}

        def all_stored() -> dict[str, list[JaegerSpan]] | None:
            found = {name: stored_spans(query_url, name, since, until) for name in masters}
            ended = {
                name: sum(
                    1 for s in spans if s.role == "lifetime" and s.attributes.get("process.parent_pid") == masters[name]
                )
                for name, spans in found.items()
            }
            return found if all(ended[name] >= len(generations[name]) for name in masters) else None

        deadline = time.monotonic() + 180
        stored = all_stored()
        while stored is None and time.monotonic() < deadline:
            time.sleep(5)
            stored = all_stored()
        if stored is None:
            stored = {name: stored_spans(query_url, name, since, until) for name in masters}
        report = otelproc.stop()

        per_service = {}
        renders = {}
        with JaegerUI(query_url, scratch / "screenshots", width=1400, height=1200) as ui:
            for name, spans in stored.items():
                by_trace = collections.Counter(s.trace_id for s in spans)
                workers = [  # its worker processes (Celery's master also runs `uname -p` once, at its start)
                    s
                    for s in process_spans(spans)
                    if s.attributes.get("process.parent_pid") == masters[name]
                    and s.attributes.get("process.executable.name") == SUBJECT
                ]
                seen = collections.Counter(s.attributes["process.pid"] for s in workers)
                duplicates = sum(n - 1 for n in collections.Counter((s.trace_id, s.span_id) for s in spans).values())
                (master_span,) = [s for s in process_spans(spans) if s.attributes["process.pid"] == masters[name]]
                newest = max(workers, key=lambda s: int(s.attributes["otelproc.process.key"].rsplit("/", 1)[1]))
                per_service[name] = {
                    "generations": len(generations[name]),
                    "rate": len(generations[name]) / elapsed,
                    "stored_once": seen == collections.Counter(generations[name]) and duplicates == 0,
                    "missing": sum((collections.Counter(generations[name]) - seen).values()),
                    "extra": sum((seen - collections.Counter(generations[name])).values()) + duplicates,
                    "extra_processes": [
                        (s.name, s.attributes.get("process.command_args"))
                        for s in workers
                        if s.attributes["process.pid"] in seen - collections.Counter(generations[name])
                    ],
                    "largest_trace": max(by_trace.values()),
                    "traces": len(by_trace),
                    "master_trace_spans": by_trace[master_span.trace_id],
                    "newest_trace_spans": by_trace[newest.trace_id],
                }
                renders[name] = {
                    "master": render_seconds(ui, master_span.trace_id),
                    "newest": render_seconds(ui, newest.trace_id),
                }
                ui.open_trace(master_span.trace_id)
                ui.screenshot(f"{name}-master")
    finally:
        stop_load.set()
        for service in services:
            service.stop()
        otelproc.kill()
        redis_server.terminate()
        redis_server.wait(30)
        jaeger.stop()
    total = sum(p["generations"] for p in per_service.values())
    return {
        "elapsed_s": elapsed,
        "requests": answered[0],
        "tasks": sent[0],
        "services": per_service,
        "renders": renders,
        "otelproc_cpu_s": cpu_during,
        "generations": total,
        "samples": samples,
        "dropped": report.dropped_text(),
        "dropped_nothing": report.dropped_nothing,
        "stop_line": f"{report.events} events, {report.spans} spans, dropped: {report.dropped_text()}",
    }


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, help="seconds of churn (default 600; --quick 45)")
    args = p.parse_args()
    common.require_root()
    duration = args.duration or (45.0 if args.quick else 600.0)
    out = common.out_dir(args)
    scratch = common.WORK / "churn"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    machine = common.machine()
    data = run(duration, scratch)
    samples = data["samples"]
    tenth = samples[max(0, len(samples) // 10)]
    growth_mb = (samples[-1][1] - tenth[1]) / MB
    cpu_per_k = data["otelproc_cpu_s"] / data["generations"] * 1000 if data["generations"] else float("nan")
    rss_per_k = (
        (samples[-1][1] - tenth[1]) / MB / ((samples[-1][3] - tenth[3]) / 1000) if samples[-1][3] > tenth[3] else 0.0
    )
    services = data["services"]
    churn = Table(
        "Churn",
        ["service", "generations", "per second", "stored once", "largest trace (spans)", "traces", "master's trace"],
        [
            [
                name,
                s["generations"],
                s["rate"],
                "yes" if s["stored_once"] else f"no ({s['missing']} missing, {s['extra']} extra)",
                s["largest_trace"],
                s["traces"],
                s["master_trace_spans"],
            ]
            for name, s in services.items()
        ],
        note=f"{data['elapsed_s']:.0f} s of churn, both masters at once; {data['requests']:,} requests answered, "
        f"{data['tasks']:,} tasks sent. otelproc's last line: {data['stop_line']}",
    )
    renders = Table(
        "Jaeger UI: time to draw a trace (headless Chromium, median of 3)",
        ["service", "master's trace (s)", "spans", "newest worker's trace (s)", "spans"],
        [
            [name, r["master"], services[name]["master_trace_spans"], r["newest"], services[name]["newest_trace_spans"]]
            for name, r in data["renders"].items()
        ],
    )
    footprint = Table(
        "otelproc over the run",
        [
            "RSS at 10% (MB)",
            "RSS at the end (MB)",
            "growth (MB)",
            "MB per 1,000 generations",
            "CPU s per 1,000 generations",
        ],
        [[tenth[1] / MB, samples[-1][1] / MB, growth_mb, rss_per_k, cpu_per_k]],
    )
    largest = max(s["largest_trace"] for s in services.values())
    slowest = max(max(r.values()) for r in data["renders"].values())
    targets = [
        Target("largest trace", f"<= {BOUND} spans", f"{largest:,}", largest <= BOUND),
        Target(
            "the master's trace and the newest worker's drawn",
            f"<= {RENDER_TARGET_S} s",
            f"{slowest:.2f} s",
            slowest <= RENDER_TARGET_S,
        ),
        Target(
            "every generation's process span stored exactly once",
            "all",
            ", ".join(f"{n}: {'yes' if s['stored_once'] else 'no'}" for n, s in services.items()),
            all(s["stored_once"] for s in services.values()),
        ),
        Target(
            "otelproc's RSS flat",
            f"<= {FLAT_MB} MB growth after 10% of the run",
            f"{growth_mb:+.1f} MB",
            growth_mb <= FLAT_MB,
        ),
        Target("otelproc dropped nothing", "nothing", data["dropped"], data["dropped_nothing"]),
    ]
    common.write_results(
        out,
        "churn",
        "Churn: masters recycling their workers, the bound on a process trace, and Jaeger's UI",
        machine,
        {"duration_s": duration, "trace_spans": BOUND},
        [churn, renders, footprint],
        targets,
        {k: v for k, v in data.items() if k != "samples"} | {"samples": samples},
    )


if __name__ == "__main__":
    main()
