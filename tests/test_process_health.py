"""Process health as metrics and alerts, end to end: real processes on the real kernel, `otelproc run`,
the Collector of collector-config.yaml (its spanmetrics connector), the real Prometheus with the shipped
deploy/prometheus/ configuration and rules, and Jaeger's Monitor tab in a real browser; and the
Kubernetes path: deploy/kubernetes/collector.yaml's Collector remote-writing to prometheus.yaml's.

The rules' own cases (each alert on the series that should fire it, and quiet on those that should
not) are promtool's unit tests in deploy/prometheus/rules_test.yml, run here too. The Monitor tab's
screenshot goes to JAEGER_UI_SCREENSHOTS (default: the test's temporary directory); docs/images/ holds
it: `JAEGER_UI_SCREENSHOTS=docs/images python3 -m pytest tests/test_process_health.py`.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

import httpx
import psutil
import pytest
import yaml

from support import REPO
from support.deploy import contrib_collector, expand, find
from support.jaeger import Backend, demo_env, find_spans, instrument_command, running_backend, stop_server, wait_for
from support.jaeger_ui import JaegerUI
from support.local_stack import kill_worker, lifetime_span
from support.ports import free_ports
from support.otlp_receiver import GrpcReceiver
from support.prometheus import CONFIG, RULES, prometheus_dir, running_prometheus
from support.subjects import EAT_MEMORY, MATCH_TEST, MEMORY_V1, TEST_COMM, remove_cgroup

RULES_TEST = REPO / "deploy" / "prometheus" / "rules_test.yml"
APPS = REPO / "tests" / "apps"
KUBERNETES = REPO / "deploy" / "kubernetes"
# What a span metric may be labelled by: the connector's dimensions (collector-config.yaml), the
# scrape's and the exporter's own labels. Nothing that names one process (a pid, a command line).
ALLOWED_LABELS = {
    "__name__",
    "job",
    "instance",
    "exported_job",
    "exported_instance",
    "otel_scope_name",
    "otel_scope_schema_url",
    "otel_scope_version",
    "service_name",
    "span_name",
    "span_kind",
    "status_code",
    "le",
    "otelproc_span",
    "otelproc_started_span",
    "otelproc_exit_outcome",
    "otelproc_exit_sender",
    "error_type",
    "k8s_namespace_name",
    "k8s_deployment_name",
    "k8s_statefulset_name",
    "k8s_daemonset_name",
}


def test_the_shipped_configuration_and_rules_pass_promtool():
    promtool = str(prometheus_dir() / "promtool")
    for command in ([promtool, "check", "config", str(CONFIG)], [promtool, "test", "rules", str(RULES_TEST)]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.fixture
def monitored(tmp_path: Path) -> Iterator[Backend]:
    """Prometheus (the shipped configuration and rules, every second), Jaeger with its Monitor tab, and the Collector."""
    yield from running_backend(tmp_path, monitor=True)


def test_a_crash_loop_and_an_oom_kill_fire_their_alerts_and_a_healthy_service_nothing(monitored, sidecar, test_python):
    prometheus = monitored.prometheus
    assert prometheus is not None
    sidecar(*MATCH_TEST, endpoint=monitored.collector_endpoint)
    healthy_port, crashing_port = free_ports(2)
    # A healthy service: the demo, two workers, whose requests run children that exit 0.
    healthy = subprocess.Popen(
        [instrument_command(), test_python, "-m", "uvicorn", "app:app", "--app-dir", str(REPO / "demo")]
        + ["--host", "127.0.0.1", "--port", str(healthy_port), "--workers", "2"],
        env={**demo_env(monitored.collector_endpoint), "OTEL_SERVICE_NAME": "healthy"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # A crash loop as a service manager makes one: a shell (not tracked) restarts uvicorn, whose app
    # fails its start-up (status 3), half a second after each exit.
    loop = subprocess.Popen(
        ["sh", "-c", 'while :; do "$0" -m uvicorn dying:app --app-dir "$1" --port "$2" --lifespan on; sleep 0.5; done']
        + [test_python, str(APPS), str(crashing_port)],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELPROC_"))},
            "OTEL_SERVICE_NAME": "crashloop",
            "DYING": "lifespan",
            "PYTHONPATH": str(APPS),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    crashes: set[int] = set()
    try:

        def spawned() -> int:
            try:
                return httpx.get(f"http://127.0.0.1:{healthy_port}/spawn", timeout=30).json()["child"]
            except httpx.TransportError:
                return 0

        children = [wait_for(spawned, "the healthy service to run a child", 60) for _ in range(4)]
        # A third service's process, OOM-killed in a memory cgroup at its 64 MiB limit.
        cgroup = MEMORY_V1 / f"otelproc-health-{os.getpid()}"
        cgroup.mkdir()
        try:
            (cgroup / "memory.limit_in_bytes").write_text(str(64 << 20))
            hungry = subprocess.Popen(
                [test_python, "-c", EAT_MEMORY, str(cgroup)],
                env={**os.environ, "OTEL_SERVICE_NAME": "hungry"},
                stdout=subprocess.PIPE,
                text=True,
            )
            assert hungry.stdout is not None and hungry.stdout.readline().strip() == "inside"
            assert hungry.wait(60) == -signal.SIGKILL
        finally:
            remove_cgroup(cgroup)

        def firing() -> dict[str, dict[str, Any]]:
            crashes.update(p.pid for p in psutil.Process(loop.pid).children())
            fired = {a["labels"]["alertname"]: a for a in prometheus.alerts() if a["state"] == "firing"}
            return fired if {"OtelprocCrashLoop", "OtelprocOOMKill"} <= set(fired) else {}

        fired = wait_for(firing, "the crash-loop and OOM-kill alerts to fire", 180)
        assert loop.poll() is None, "the loop ran all along"
    finally:
        stop_server(loop)
        stop_server(healthy)
    oom = fired["OtelprocOOMKill"]["labels"]
    assert (oom["service_name"], oom["span_name"], oom["severity"]) == ("hungry", f"{TEST_COMM} -c", "warning"), oom
    alert = fired["OtelprocCrashLoop"]
    labels = alert["labels"]
    assert (labels["service_name"], labels["span_name"], labels["severity"]) == ("crashloop", "uvicorn", "critical")
    assert re.fullmatch(
        r"crashloop: uvicorn processes ended in error \d+ times in 10 minutes", alert["annotations"]["summary"]
    )
    # The healthy service was measured (its children's ends are counted) and fired nothing, in any state.
    ended_ok = prometheus.query('otelproc:process_ends:increase10m{service_name="healthy",otelproc_exit_outcome="ok"}')
    assert ended_ok and float(ended_ok[0]["value"][1]) >= len(children), ended_ok
    # Each alert for its own service only; the healthy one has none, in any state.
    assert sorted((a["labels"]["alertname"], a["labels"]["service_name"]) for a in prometheus.alerts()) == [
        ("OtelprocCrashLoop", "crashloop"),
        ("OtelprocOOMKill", "hungry"),
    ]
    # However many processes ended, the series are per program and outcome: no pid, no command line.
    series = prometheus.query('{__name__=~"traces_span_metrics_.*",service_name=~"crashloop|healthy"}')
    assert not {name for s in series for name in s["metric"]} - ALLOWED_LABELS
    crashloop_calls = [
        s for s in series if s["metric"]["service_name"] == "crashloop" and s["metric"]["__name__"].endswith("_total")
    ]
    # The lifetime spans (with otelproc.started_span or without: whether the crash came after
    # --start-span-delay) and the 'started' spans: at most three series, however many crashes.
    assert len(crashes) >= 4 and len(crashloop_calls) <= 3, (crashes, crashloop_calls)
    lifetimes = [s["metric"] for s in crashloop_calls if s["metric"]["otelproc_span"] == "lifetime"]
    assert lifetimes and all(
        (m["span_name"], m["otelproc_exit_outcome"], m["error_type"]) == ("uvicorn", "exit_status", "3")
        for m in lifetimes
    ), lifetimes


def test_the_monitor_tab_shows_how_the_demos_workers_ended(local_stack, screenshots):
    since = datetime.datetime.now(datetime.timezone.utc)
    local_stack.up()
    master = local_stack.pid("demo")
    # One worker exits with an error in the middle of a request; another is killed.
    workers = {p.pid for p in psutil.Process(master).children() if "spawn_main" in " ".join(p.cmdline())}
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{local_stack.demo}/crash", timeout=30)
    crashed = wait_for(
        lambda: next(
            (
                s
                for s in find_spans(local_stack.jaeger, "demo", since)
                if s.role == "lifetime" and s.attributes["process.pid"] in workers
            ),
            None,
        ),
        "the crashed worker's lifetime span in Jaeger",
        timeout=90,
    )
    assert crashed.status_message == "exit status 70"
    (survivor,) = workers - {crashed.attributes["process.pid"]}
    kill_worker(local_stack, survivor)
    wait_for(lambda: lifetime_span(local_stack.jaeger, survivor, since), "the killed worker's span in Jaeger", 90)

    # The Monitor tab draws what Prometheus has when it opens (it does not refresh itself): both ends
    # in Prometheus first, as a person would reload the page until then.
    ends = 'sum(traces_span_metrics_calls_total{service_name="demo",span_name="uvicorn worker"})'
    wait_for(lambda: local_stack.prometheus.value(ends) == 2, "Prometheus to have both workers' ends", 60)
    with JaegerUI(local_stack.jaeger, screenshots) as ui:
        ui.open_monitor("demo", "Internal")

        def worker_row() -> list[str] | None:
            row = ui.operations().get("uvicorn worker")
            return row if row and row[2] == "100%" else None

        latency, rate, _, _ = ui.wait(worker_row, "the 'uvicorn worker' row at 100% errors", timeout=30)
        # P95 of the lifetimes: seconds or milliseconds (the workers lived a few seconds), never empty.
        assert re.fullmatch(r"[\d.]+(ms|s|min)", latency), latency
        assert rate.endswith("req/s"), rate
        assert "uvicorn worker started" in ui.operations()
        ui.screenshot("monitor-tab")


def kubernetes_collector_on_loopback(ports: list[int], jaeger: str, remote_write: str) -> dict[str, Any]:
    """deploy/kubernetes/collector.yaml's config as it runs outside a cluster: k8sattributes, which asks
    the API server, left out; its listeners on loopback ports; its own metrics off."""
    text = find(KUBERNETES / "collector.yaml", "ConfigMap")["data"]["config.yaml"]
    env = {"JAEGER_OTLP_ENDPOINT": jaeger, "PROMETHEUS_REMOTE_WRITE_URL": remote_write, "POD_NAME": "otel-collector-0"}
    config = yaml.safe_load(expand(text, env))
    del config["processors"]["k8sattributes"]
    for pipeline in config["service"]["pipelines"].values():
        if "processors" in pipeline:
            pipeline["processors"].remove("k8sattributes")
    grpc, http, health = ports
    config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] = f"127.0.0.1:{grpc}"
    config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] = f"127.0.0.1:{http}"
    config["extensions"]["health_check"]["endpoint"] = f"127.0.0.1:{health}"
    config["service"]["telemetry"] = {"metrics": {"level": "none"}}
    return config


def test_the_kubernetes_collector_remote_writes_process_metrics_that_the_rules_read(tmp_path, sidecar, test_python):
    """The Kubernetes path: collector.yaml's Collector (the contrib stand-in) remote-writes to the
    Prometheus of prometheus.yaml (its configuration and flags), which evaluates the shipped rules."""
    (server,) = find(KUBERNETES / "prometheus.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    flags = [a for a in server["args"] if not a.startswith(("--config.file", "--storage.tsdb.path"))]
    config = yaml.safe_load(find(KUBERNETES / "prometheus.yaml", "ConfigMap")["data"]["prometheus.yml"])
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(RULES)]
    p_port, grpc, http, health = free_ports(4)
    jaeger = GrpcReceiver()
    jaeger.start()
    prometheus_run = running_prometheus(tmp_path, p_port, config, *flags)
    collector = None
    try:
        prometheus = next(prometheus_run)
        collector_config = tmp_path / "collector.yaml"
        collector_config.write_text(
            yaml.safe_dump(
                kubernetes_collector_on_loopback(
                    [grpc, http, health], f"127.0.0.1:{jaeger.port}", f"{prometheus.url}/api/v1/write"
                )
            )
        )
        with (tmp_path / "collector.log").open("wb") as log:
            collector = subprocess.Popen(
                [contrib_collector(), "--config", str(collector_config)], stdout=log, stderr=subprocess.STDOUT
            )
        sidecar(*MATCH_TEST, endpoint=f"http://127.0.0.1:{grpc}")
        for _ in range(3):  # from pytest, which is not tracked
            subprocess.run([test_python, "-c", "raise SystemExit(4)"], check=False, timeout=60)

        ends = 'sum(otelproc:process_ends:increase10m{error_type="4"})'
        # spanmetrics flushes every 15 s in collector.yaml: the first remote write within about 20 s.
        wait_for(lambda: prometheus.value(ends) >= 3, "3 ends with status 4 in Prometheus, remote-written", 90)
        (series,) = prometheus.query('traces_span_metrics_calls_total{error_type="4"}')
        assert series["metric"]["otelcol_replica"] == "otel-collector-0"
        assert series["metric"]["otelproc_exit_outcome"] == "exit_status"
        assert not set(series["metric"]) - ALLOWED_LABELS - {"otelcol_replica"}
    finally:
        if collector is not None:
            stop_server(collector)
        prometheus_run.close()
        jaeger.stop()
