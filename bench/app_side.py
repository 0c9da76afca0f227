"""What otelproc's app-side helper costs a traced service: per request span, and in requests per second.

The helper (otelproc.app.enable(), or OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=otelproc under
opentelemetry-instrument) links each request span to its process span and keeps every span the
process has not exported yet in its span region. Measured against the same service without it:

- per span: the OpenTelemetry SDK alone (a TracerProvider, a BatchSpanProcessor whose exporter
  drops what it is given) making server spans as an ASGI instrumentation does (five attributes at
  the start, the status code at the end), in a process of its own, the helper on or off, the two
  alternated round by round;
- per request: a real uvicorn (one worker, an ASGI app under opentelemetry-instrumentation-asgi)
  and a real gunicorn (one sync worker, a Flask app whose server span a WSGI middleware makes),
  both under opentelemetry-instrument exporting over OTLP to a receiver of this benchmark, loaded
  by ab (apache2-utils) with keep-alive; helper on and off alternated.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common
from common import REPO, Table, Target

sys.path.insert(0, str(REPO / "tests"))  # the tests' free ports
from support.ports import free_ports  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"
TARGET_US = 5.0
SPAN_LOOP = """
import os, sys, time
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

class Drop(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS

provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=100_000, schedule_delay_millis=200))
if sys.argv[1] == "helper":
    import otelproc.app
    otelproc.app.enable(provider)
tracer = provider.get_tracer("bench")
start = {"http.request.method": "GET", "url.path": "/items/3", "url.scheme": "http",
         "server.address": "127.0.0.1", "http.route": "/items/{id}"}
count = int(sys.argv[2])
def run(n):
    for _ in range(n):
        span = tracer.start_span("GET /items/{id}", kind=SpanKind.SERVER, attributes=start)
        span.set_attribute("http.response.status_code", 200)
        span.end()
run(2_000)
provider.force_flush()
began = time.process_time_ns()
run(count)
used = time.process_time_ns() - began
provider.force_flush()
print(used / count / 1000)
"""


def real_python() -> str:
    return os.path.realpath(sys.executable)


def span_cost(condition: str, count: int) -> float:
    """CPU µs per span in a fresh process (the helper patches the process: each condition gets its own).
    condition: alone, link (the helper without its span region), helper."""
    python = real_python()
    env = dict(os.environ, PYTHONPATH=str(REPO), OTELPROC_MATCH=os.path.basename(python))
    env["OTELPROC_SPAN_REGION"] = "false" if condition == "link" else "true"
    out = subprocess.run(
        [python, "-c", SPAN_LOOP, "alone" if condition == "alone" else "helper", str(count)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.split()[-1])


def instrument() -> str:
    return str(Path(real_python()).parent / "opentelemetry-instrument")


def server_command(kind: str, port: int) -> list[str]:
    python = real_python()
    if kind == "uvicorn":
        return [
            instrument(),
            python,
            "-m",
            "uvicorn",
            "asgi_app:app",
            "--app-dir",
            str(APPS),
            "--port",
            str(port),
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    return [
        instrument(),
        python,
        "-m",
        "gunicorn",
        "flask_app:app",
        "--chdir",
        str(APPS),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]


def requests_per_second(kind: str, helper: bool, endpoint: str, requests: int, concurrency: int) -> float:
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELPROC_"))}
    env.update(
        PYTHONPATH=f"{REPO}:{APPS}",
        OTEL_SERVICE_NAME=f"bench-{kind}",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTELPROC_MATCH=os.path.basename(real_python()),
    )
    if helper:
        env["OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"] = "otelproc"
    server = subprocess.Popen(server_command(kind, port), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/items/3"
        deadline = time.monotonic() + 30
        while subprocess.run(["ab", "-q", "-n", "1", url], capture_output=True).returncode != 0:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"{kind} did not answer on port {port}")
            time.sleep(0.2)
        subprocess.run(["ab", "-q", "-k", "-n", str(requests // 10), "-c", str(concurrency), url], capture_output=True)
        out = subprocess.run(
            ["ab", "-q", "-k", "-n", str(requests), "-c", str(concurrency), url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
        if failed:
            raise RuntimeError(f"{failed} of {requests} requests failed against {kind}")
        return float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--spans", type=int, help="spans per round (default 50000; --quick 5000)")
    p.add_argument("--rounds", type=int, help="alternated rounds per measurement (default 7; --quick 2)")
    p.add_argument("--requests", type=int, help="requests per load run (default 20000; --quick 2000)")
    args = p.parse_args()
    spans = args.spans or (5_000 if args.quick else 50_000)
    rounds = args.rounds or (2 if args.quick else 7)
    requests = args.requests or (2_000 if args.quick else 20_000)
    concurrency = 4
    if shutil.which("ab") is None:
        sys.exit("app_side.py needs ab (Debian: apt-get install apache2-utils)")
    out = common.out_dir(args)
    info = common.machine()

    per_span: dict[str, list[float]] = {"alone": [], "link": [], "helper": []}
    for _ in range(rounds):
        for condition in per_span:
            per_span[condition].append(span_cost(condition, spans))
    added = [h - a for a, h in zip(per_span["alone"], per_span["helper"])]
    region_part = [h - link for link, h in zip(per_span["link"], per_span["helper"])]

    receiver = common.Receiver()
    rps: dict[str, dict[str, list[float]]] = {}
    try:
        for kind in ("uvicorn", "gunicorn"):
            rps[kind] = {"alone": [], "helper": []}
            for _ in range(max(2, rounds // 2)):
                for helper in (False, True):
                    rps[kind]["helper" if helper else "alone"].append(
                        requests_per_second(kind, helper, receiver.endpoint, requests, concurrency)
                    )
    finally:
        receiver.stop()

    med = statistics.median
    span_table = Table(
        "Per request span: CPU µs, the SDK alone and with the helper",
        ["condition", "rounds", "median µs per span", "min", "max"],
        [[name, len(v), med(v), min(v), max(v)] for name, v in per_span.items()]
        + [["added by the helper (pairwise)", len(added), med(added), min(added), max(added)]]
        + [
            [
                "of which the span region (pairwise)",
                len(region_part),
                med(region_part),
                min(region_part),
                max(region_part),
            ]
        ],
        note=f"{spans:,} server spans per round (5 attributes at start, 1 at the end), in a process of its own; "
        "rounds alternate the conditions: the SDK alone; link, the helper with OTELPROC_SPAN_REGION=false (the "
        "process link and the resource key); helper, all of it (the span region written at start and end, "
        "let go at export, as well). CPU of the whole process, the batch processor's thread included.",
    )
    rps_rows = []
    for kind, by in rps.items():
        ratios = [h / a for a, h in zip(by["alone"], by["helper"])]
        rps_rows.append(
            [kind, med(by["alone"]), med(by["helper"]), med(ratios), f"{min(ratios):.3f}–{max(ratios):.3f}"]
        )
    rps_table = Table(
        "Requests per second, the same service without and with the helper",
        ["server", "without (median)", "with (median)", "ratio with/without (median)", "per-round ratios"],
        rps_rows,
        note=f"ab -k -c {concurrency} -n {requests:,} after a warm-up; one worker; spans exported over OTLP/gRPC "
        "to a receiver in this benchmark; runs alternate.",
    )
    targets = [
        Target("added CPU per request span", f"<= {TARGET_US:g} µs", f"{med(added):.1f} µs", med(added) <= TARGET_US),
        *(
            Target(f"requests/s with the helper, {row[0]}", "no measurable change", f"{row[3]:.3f}x", None)
            for row in rps_rows
        ),
    ]
    common.write_results(
        out,
        "app_side",
        "What the app-side helper costs a traced service",
        info,
        {"spans": spans, "rounds": rounds, "requests": requests, "concurrency": concurrency},
        [span_table, rps_table],
        targets,
        {"per_span": per_span, "added": added, "region_part": region_part, "rps": rps},
    )


if __name__ == "__main__":
    main()
