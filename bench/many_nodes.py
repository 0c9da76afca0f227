"""Many nodes, one backend: several otelproc agents, each a "node" of its own, into one Collector,
then Jaeger, then OpenSearch; lifetimes per second into the backend, and what limits it.

Each node is a pid namespace of its own (`unshare --pid --fork --mount-proc`) with a hostname of
its own (a UTS namespace: host.name) and a machine id of its own (a bind mount over
/etc/machine-id: host.id), as a real node has; its agent runs there as pid 1 with `--scope pidns`
and a pin directory of its own in a bpffs the benchmark mounts for itself. The node's workload
is the storm driver entered into that namespace (nsenter), running `otpbench` at a steady rate.
Every agent exports OTLP/gRPC to one Collector (the Jaeger binary of deploy/jaeger/build.sh with
collector-config.yaml), which sends to Jaeger (deploy/jaeger/opensearch.yaml), which writes to a
three-node OpenSearch cluster on loopback (tests/support/opensearch_cluster.py; deploy/opensearch/fetch.sh).

The count is taken in OpenSearch itself (Jaeger's span documents): every lifetime of every node
exactly once, each under its node's host.name. CPU time of every process of the chain (each
agent, the Collector, Jaeger, each OpenSearch node) over the run says where the time goes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import httpx
import psutil

import common
from common import Otelproc, Table, Target

sys.path.insert(0, str(common.REPO / "tests"))  # the OpenSearch cluster the fleet test stands on, and free ports
from support.opensearch_cluster import Cluster, OpenSearchMissing  # noqa: E402
from support.ports import free_ports  # noqa: E402

JAEGER_BUILD = common.REPO / "deploy" / "jaeger" / "build.sh"
JAEGER_CONFIG = common.REPO / "deploy" / "jaeger" / "opensearch.yaml"
COLLECTOR_CONFIG = common.REPO / "collector-config.yaml"
SERVICE = "many-nodes"
WARM_UP = 50  # lifetimes per node before the measured run
IDLE_S = 5.0  # seconds of nothing sent, to measure what each process takes idle
SETTLE_S = 10.0  # seconds with no new span, after the last expected one, before counting


class Node:
    """One node: a pid, mount and UTS namespace whose pid 1 is its otelproc agent."""

    def __init__(self, index: int, endpoint: str, pin_root: Path, scratch: Path) -> None:
        self.name = f"node-{index}"
        self.pin_dir = pin_root / self.name
        machine_id = scratch / f"{self.name}.machine-id"
        machine_id.write_text(f"{index:032x}\n")
        setup = f'hostname {self.name} && mount --bind {machine_id} /etc/machine-id && exec "$@"'
        self.agent = Otelproc(
            common.MATCHED,
            endpoint,
            "--scope",
            "pidns",
            "--pin-dir",
            str(self.pin_dir),
            "--service-name",
            SERVICE,
            env={"OTEL_METRICS_EXPORTER": "none"},
            wrapper=["unshare", "--pid", "--fork", "--mount-proc", "--uts", "--", "sh", "-c", setup, "sh"],
        )
        self.agent.wait_attached()
        # unshare forks the agent and blocks SIGTERM itself: the agent, pid 1 of the namespace, is
        # the one to measure and to signal.
        (child,) = psutil.Process(self.agent.pid).children()
        self.pid = child.pid

    def storm(self, programs: common.Programs, iterations: int, rate: float) -> common.StormResult:
        """The workload, inside the node's namespaces (nsenter forks into the pid namespace)."""
        enter = ["nsenter", "-t", str(self.pid), "-p", "-m", "-u", "--"]
        return common.storm(programs, programs.matched, iterations, 1, rate, wrapper=enter)

    def stop(self) -> common.StopReport:
        if psutil.pid_exists(self.pid):
            os.kill(self.pid, signal.SIGTERM)
        return self.agent.stop()

    def detach(self) -> None:
        """The pinned probe outlives the agent; removed as `otelproc detach` does."""
        subprocess.run(
            [common.PYTHON, "-m", "otelproc", "detach", "--pin-dir", str(self.pin_dir)],
            cwd=common.REPO,
            capture_output=True,
            check=False,
            env={**os.environ, "OTELPROC_STATE_FILE": ""},
        )


def storm_all(
    fleet: list[Node], programs: common.Programs, iterations: int, rate: float, results: dict[str, common.StormResult]
) -> list[threading.Thread]:
    """Every node's workload at once, each on a thread; `results` gets each node's StormResult."""
    threads = [
        threading.Thread(target=lambda n=n: results.__setitem__(n.name, n.storm(programs, iterations, rate)))
        for n in fleet
    ]
    for t in threads:
        t.start()
    return threads


def wait_stored(
    cluster: Cluster,
    count: int,
    threads: list[threading.Thread],
    t0: float | None = None,
    on_reached: Callable[[], None] = lambda: None,
    timeout: float = 600,
) -> tuple[float, list[tuple[float, int]]]:
    """Polls OpenSearch until it holds `count` spans, the workloads are done and nothing more has
    come for SETTLE_S (a batch sent again would come late, and be counted). Calls on_reached when
    `count` is reached; returns when that was (seconds since t0), and the samples (seconds since
    t0, spans stored)."""
    t0 = time.monotonic() if t0 is None else t0
    samples: list[tuple[float, int]] = []
    reached = None
    while True:
        stored = span_count(cluster)
        now = time.monotonic() - t0
        samples.append((now, stored))
        if reached is None and stored >= count and not any(t.is_alive() for t in threads):
            reached = now
            on_reached()
        settled = [c for t, c in samples if t >= now - SETTLE_S]
        if reached is not None and now - reached >= SETTLE_S and min(settled) == stored:
            return reached, samples
        if now > timeout:
            raise SystemExit(f"OpenSearch holds {stored} spans of {count} after {timeout} s")
        time.sleep(0.5)


def phase_rates(samples: list[tuple[float, int]], start: int, until: float, reached: float) -> tuple[float, float]:
    """Spans per second into OpenSearch while the workloads ran (until `until` s), and after, until
    all were stored (`reached` s): the backend sharing the machine with them, and on its own."""
    during = max((c - start for t, c in samples if t <= until), default=0)
    after = max(c - start for t, c in samples if t <= reached) - during
    return during / until, (after / (reached - until) if reached > until else float("nan"))


def span_count(cluster: Cluster) -> int:
    for node in cluster.nodes:
        try:
            response = httpx.get(f"{node.url}/jaeger-span-*/_count", timeout=10)
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            return response.json()["count"]
    return 0


def stored_lifetimes(cluster: Cluster) -> list[tuple[str, str, int]]:
    """(host.name, spanID, process.pid) of every stored span of the workload (the storm's processes
    set no OTEL_SERVICE_NAME: the agents' --service-name), read with a scroll."""
    url = cluster.nodes[0].url
    httpx.post(f"{url}/jaeger-span-*/_refresh", timeout=30)
    body = {"size": 5000, "_source": ["spanID", "tags", "process"], "query": {"term": {"process.serviceName": SERVICE}}}
    page = httpx.post(f"{url}/jaeger-span-*/_search", params={"scroll": "1m"}, json=body, timeout=60).json()
    found = []
    while page["hits"]["hits"]:
        for hit in page["hits"]["hits"]:
            doc = hit["_source"]
            resource = {t["key"]: t["value"] for t in doc["process"].get("tags", [])}
            attributes = {t["key"]: t["value"] for t in doc.get("tags", [])}
            found.append((resource.get("host.name"), doc["spanID"], int(attributes.get("process.pid", -1))))
        page = httpx.post(
            f"{url}/_search/scroll", json={"scroll": "1m", "scroll_id": page["_scroll_id"]}, timeout=60
        ).json()
    return found


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = common.cpu_seconds(pid)
        except (OSError, IndexError):
            out[name] = float("nan")
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run(nodes: int, per_node: int, rate: float, scratch: Path) -> dict[str, Any]:
    programs = common.build()
    binary = subprocess.run([str(JAEGER_BUILD), "--print-path"], capture_output=True, text=True).stdout.strip()
    if not binary:
        raise SystemExit("no Jaeger binary: run deploy/jaeger/build.sh (./install.sh --test runs it)")
    try:
        cluster = Cluster(size=3)
    except OpenSearchMissing as missing:
        raise SystemExit(str(missing)) from None
    pin_root = scratch / "bpffs"
    pin_root.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(pin_root)], check=True)
    started: list[Any] = []
    fleet: list[Node] = []
    try:
        cluster.start()
        cluster.wait_healthy("green", nodes=3)
        j_otlp, j_http, j_query, j_qgrpc, c_grpc, c_http, c_tel, c_metrics = free_ports(8)
        jaeger = common.JaegerService(
            binary,
            JAEGER_CONFIG,
            {
                "OPENSEARCH_URLS": "[" + ", ".join(cluster.urls) + "]",
                "JAEGER_LISTEN_HOST": "127.0.0.1",
                "JAEGER_OTLP_GRPC_PORT": str(j_otlp),
                "JAEGER_OTLP_HTTP_PORT": str(j_http),
                "JAEGER_QUERY_HTTP_PORT": str(j_query),
                "JAEGER_QUERY_GRPC_PORT": str(j_qgrpc),
            },
            scratch / "jaeger.log",
            j_otlp,
        )
        started.append(jaeger)
        collector = common.JaegerService(
            binary,
            COLLECTOR_CONFIG,
            {
                "COLLECTOR_LISTEN_HOST": "127.0.0.1",
                "COLLECTOR_OTLP_GRPC_PORT": str(c_grpc),
                "COLLECTOR_OTLP_HTTP_PORT": str(c_http),
                "COLLECTOR_TELEMETRY_PORT": str(c_tel),
                "COLLECTOR_PROMETHEUS_PORT": str(c_metrics),
                "JAEGER_OTLP_ENDPOINT": f"127.0.0.1:{j_otlp}",
            },
            scratch / "collector.log",
            c_grpc,
        )
        started.append(collector)
        for i in range(1, nodes + 1):
            fleet.append(Node(i, f"http://127.0.0.1:{c_grpc}", pin_root, scratch))
        pids = {n.name: n.pid for n in fleet} | {"collector": collector.proc.pid, "jaeger": jaeger.proc.pid}
        pids |= {f"opensearch {n.name}": n.proc.pid for n in cluster.nodes}
        # A warm-up, so that creating the day's indices is not part of what is measured; then what
        # each process takes when nothing is sent (JVMs that just started keep compiling).
        storm_all(fleet, programs, WARM_UP, 100.0, {})
        wait_stored(cluster, nodes * WARM_UP, [])  # settled: none of the warm-up comes late
        cpu_before, t_idle = cpu_of(pids), time.monotonic()
        time.sleep(IDLE_S)
        idle = {name: cpu - cpu_before[name] for name, cpu in cpu_of(pids).items()}
        idle_s = time.monotonic() - t_idle
        before = span_count(cluster)
        cpu_before, busy_before, t0 = cpu_of(pids), machine_busy(), time.monotonic()
        results: dict[str, common.StormResult] = {}
        threads = storm_all(fleet, programs, per_node, rate, results)
        total = nodes * per_node
        at_reached: dict[str, Any] = {}

        def snapshot() -> None:
            at_reached.update(cpu=cpu_of(pids), busy=machine_busy())

        t_stored, samples = wait_stored(cluster, before + total, threads, t0, snapshot)
        cpu_after, busy_after = at_reached["cpu"], at_reached["busy"]
        storms_s = max(r.finished for r in results.values()) - min(r.started for r in results.values())
        reports = {n.name: n.stop() for n in fleet}
        lifetimes = stored_lifetimes(cluster)
    finally:
        for node in fleet:
            node.agent.kill()
            node.detach()
        for service in reversed(started):
            service.stop()
        cluster.stop()
        subprocess.run(["umount", str(pin_root)], check=False)
    per_host = Counter(host for host, _, _ in lifetimes)
    repeated = sum(c - 1 for c in Counter((host, pid) for host, _, pid in lifetimes).values() if c > 1)
    cpu = {name: cpu_after[name] - cpu_before[name] for name in pids}
    return {
        "nodes": nodes,
        "per_node": per_node,
        "rate_per_node": rate,
        "total": total,
        "storms_s": storms_s,
        "stored_after_s": t_stored,
        "stored": len(lifetimes),
        "rates_during_after": phase_rates(samples, before, storms_s, t_stored),
        "idle_cpu_s": idle,
        "idle_s": idle_s,
        "per_host": dict(per_host),
        "repeated": repeated,
        "distinct_span_ids": len({span for _, span, _ in lifetimes}),
        "cpu_s": cpu,
        "run_cpu_s_available": t_stored * (os.cpu_count() or 1),
        "machine_busy": (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1]),
        "machine_busy_cpu_s": (busy_after[0] - busy_before[0]) / common.CLK_TCK,
        "samples": samples,
        "agents": {name: {"spans": r.spans, "dropped": r.dropped, "exit": r.returncode} for name, r in reports.items()},
    }


def component(name: str) -> str:
    return (
        "otelproc (all agents)"
        if name.startswith("node-")
        else ("OpenSearch (3 nodes)" if name.startswith("opensearch") else name)
    )


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, help="otelproc agents, one per node (default 4; --quick 2)")
    p.add_argument("--per-node", type=int, help="lifetimes per node (default 5000; --quick 300)")
    p.add_argument("--rate", type=float, help="lifetimes/s each node's workload runs at (default 250; --quick 100)")
    args = p.parse_args()
    common.require_root()
    nodes = args.nodes or (2 if args.quick else 4)
    per_node = args.per_node or (300 if args.quick else 5000)
    rate = args.rate or (100.0 if args.quick else 250.0)
    out = common.out_dir(args)
    info = common.machine()
    with tempfile.TemporaryDirectory(prefix="otelproc-many-nodes-") as scratch:
        r = run(nodes, per_node, rate, Path(scratch))
    total, stored_s = r["total"], r["stored_after_s"]
    each = per_node + WARM_UP  # every node's lifetimes, the warm-up's included
    into_backend = total / stored_s
    run_cpu: Counter[str] = Counter()
    idle_cpu: Counter[str] = Counter()
    for name, seconds in r["cpu_s"].items():
        run_cpu[component(name)] += seconds
        idle_cpu[component(name)] += r["idle_cpu_s"][name] / r["idle_s"]  # CPU s per s
    cpu_rows = [
        [
            name,
            seconds,
            100 * seconds / stored_s,
            100 * idle_cpu[name],
            1e6 * max(0.0, seconds - idle_cpu[name] * stored_s) / total,
        ]
        for name, seconds in run_cpu.most_common()
    ]
    rest = r["machine_busy_cpu_s"] - sum(run_cpu.values())
    cpu_rows.append(
        [
            "everything else: the workloads, the kernel, other users of the machine",
            rest,
            100 * rest / stored_s,
            float("nan"),
            float("nan"),
        ]
    )
    busiest = max(r["cpu_s"], key=lambda n: r["cpu_s"][n] - r["idle_cpu_s"][n] / r["idle_s"] * stored_s)
    table = Table(
        f"{nodes} nodes x {per_node:,} lifetimes at {rate:.0f}/s each, one Collector, Jaeger, OpenSearch",
        ["what", "value"],
        [
            ["lifetimes run (all nodes; after a warm-up of " + f"{WARM_UP} per node)", total],
            ["offered rate, all nodes (lifetimes/s)", total / r["storms_s"]],
            ["workload ran for (s)", r["storms_s"]],
            ["all stored in OpenSearch after (s, from the first start)", stored_s],
            ["lifetimes/s into the backend, start to all stored", into_backend],
            ["lifetimes/s into the backend while the workloads ran", r["rates_during_after"][0]],
            ["lifetimes/s into the backend after they ended, until all stored", r["rates_during_after"][1]],
            ["stored spans, warm-up included / distinct span ids", f"{r['stored']} / {r['distinct_span_ids']}"],
            ["per node (host.name: spans)", ", ".join(f"{h}: {c}" for h, c in sorted(r["per_host"].items()))],
            ["a (node, pid) stored more than once", r["repeated"]],
            [
                "agents: spans (dropped)",
                ", ".join(
                    f"{n}: {a['spans']} ({', '.join(f'{k}={v}' for k, v in a['dropped'].items() if v) or 'none'})"
                    for n, a in r["agents"].items()
                ),
            ],
            ["machine busy over the run", f"{100 * r['machine_busy']:.0f}% of {os.cpu_count()} cores"],
        ],
        note="Each node: unshare --pid --fork --mount-proc --uts, its own hostname and /etc/machine-id, "
        "`otelproc run --scope pidns --pin-dir <its own, in the benchmark's bpffs>`, its workload entered "
        "with nsenter. Counted in OpenSearch's jaeger-span-* indices.",
    )
    cpu_table = Table(
        "CPU by component",
        [
            "component",
            "CPU s over the run",
            "% of one core, run",
            "% of one core, idle",
            "CPU ms per 1,000 lifetimes, above idle",
        ],
        cpu_rows,
        note=f"utime+stime from the workloads' start until every span was stored ({stored_s:.1f} s); idle: "
        f"{r['idle_s']:.0f} s with nothing sent, just before. Busiest single process above idle: {busiest}.",
    )
    exact = (
        r["stored"] == nodes * each
        and r["repeated"] == 0
        and len(r["per_host"]) == nodes
        and all(c == each for c in r["per_host"].values())
    )
    targets = [
        Target(
            "every lifetime of every node, exactly once, under its node",
            f"{nodes * each:,} spans, {nodes} hosts",
            f"{r['stored']:,} spans, {len(r['per_host'])} hosts, {r['repeated']} repeated",
            exact,
        ),
        Target(
            "lifetimes/s into the backend",
            "report",
            f"{into_backend:,.0f}/s start to stored ({r['rates_during_after'][0]:,.0f}/s while the workloads "
            f"ran, {r['rates_during_after'][1]:,.0f}/s after)",
            None,
        ),
        Target(
            "the bottleneck",
            "report",
            f"{component(busiest)}; CPU ms per 1,000 lifetimes: "
            + ", ".join(f"{row[0]} {row[4]:,.0f}" for row in cpu_rows if row[4] == row[4])
            + f"; machine {100 * r['machine_busy']:.0f}% busy",
            None,
        ),
    ]
    common.write_results(
        out,
        "many_nodes",
        "Many nodes, one backend: otelproc agents -> Collector -> Jaeger -> OpenSearch",
        info,
        {"nodes": nodes, "per_node": per_node, "rate_per_node": rate},
        [table, cpu_table],
        targets,
        r,
    )


if __name__ == "__main__":
    main()
