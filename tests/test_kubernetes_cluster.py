"""deploy/kubernetes/ and the Helm chart on a real Kubernetes cluster, with the commands docs/deployment.md
gives users, and what they show read back in Jaeger's API.

The cluster is a single node on this machine, every part of it upstream (deploy/kubernetes/cluster/cluster.sh:
etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, CoreDNS and a kubelet on
containerd with runc and the CNI bridge), with the stand-in images loaded into its containerd (no registry is
reachable). The Collector's k8sattributes watches that API server: the pod metadata on each span is observed,
not configured.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import psutil
import pytest
import yaml

from support import REPO
from support.containers import BUILD_IMAGES, build_stand_ins, run
from support.deploy import documents
from support.docker_engine import iptables_rules
from support.callers import Caller, in_container, pid_inside, serving_worker
from support.prometheus import Prometheus
from support.regions import holds_region
from support.sidecar import PinRoot
from support.jaeger import (
    SERVER,
    STATUS_ERROR,
    JaegerSpan,
    built_by,
    monitor_error_operations,
    path_of,
    process_spans,
    request_spans,
    spans_while_up,
    wait_for,
)

CLUSTER_SCRIPT = REPO / "deploy" / "kubernetes" / "cluster" / "cluster.sh"
KUBERNETES = REPO / "deploy" / "kubernetes"
CHART = REPO / "deploy" / "helm" / "otelproc"
NAMESPACE = "otelproc-demo"
NODE = "otelproc-node"  # cluster.sh's node
NODE_STATE = "/var/lib/otelproc"  # the DaemonSet's hostPath, made on the node (DirectoryOrCreate)


class Cluster:
    def __init__(self, kubeconfig: str) -> None:
        self.env = {**os.environ, "KUBECONFIG": kubeconfig}

    def kubectl(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(CLUSTER_SCRIPT), "kubectl", *args], capture_output=True, text=True, timeout=timeout, env=self.env
        )
        assert not check or result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr[-2000:]}"
        return result

    def apply(self, *files: Path) -> None:
        self.kubectl("apply", *[arg for path in files for arg in ("-f", str(path))])

    def rollout(self, workload: str, timeout: int = 240) -> None:
        result = self.kubectl("-n", NAMESPACE, "rollout", "status", workload, f"--timeout={timeout}s", check=False)
        assert result.returncode == 0, f"{workload} not rolled out: {result.stderr}\n{self.describe_pods()}"

    def describe_pods(self) -> str:
        return self.kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide", check=False).stdout + "\n".join(
            self.kubectl("-n", NAMESPACE, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout.splitlines()[
                -30:
            ]
        )

    def pods(self, selector: str) -> list[dict[str, Any]]:
        """The running, not terminating, pods of a label selector."""
        listed = yaml.safe_load(self.kubectl("-n", NAMESPACE, "get", "pods", "-l", selector, "-o", "json").stdout)
        return [
            p
            for p in listed["items"]
            if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]
        ]

    @contextlib.contextmanager
    def port_forward(self, target: str, port: int) -> Iterator[str]:
        """`kubectl port-forward`, as the docs tell users to reach Jaeger and the demo: a loopback URL."""
        proc = subprocess.Popen(
            [
                str(CLUSTER_SCRIPT),
                "kubectl",
                "-n",
                NAMESPACE,
                "port-forward",
                "--address",
                "127.0.0.1",
                target,
                f":{port}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
            assert match, (
                f"kubectl port-forward {target}: {line}{proc.stdout.read() if proc.poll() is not None else ''}"
            )
            yield f"http://127.0.0.1:{match.group(1)}"
        finally:
            proc.terminate()
            proc.wait(10)


def container_process(pod: dict[str, Any], container: str) -> int:
    """The host pid of the one process of a pod's container (otelproc's runs no other)."""
    cid = container_id(pod, container)
    (process,) = [p for p in psutil.process_iter() if in_container(p.pid, cid)]
    return process.pid


def container_id(pod: dict[str, Any], container: str) -> str:
    (status,) = [s for s in pod["status"]["containerStatuses"] if s["name"] == container]
    runtime, _, cid = status["containerID"].partition("://")
    assert runtime == "containerd"
    return cid


@pytest.fixture(scope="module")
def images() -> list[str]:
    """otelproc and the demo built from the repository's Dockerfiles, and the stand-ins of the images the
    manifests name, all in podman's store; their names, as the manifests write them."""
    names = run(str(BUILD_IMAGES), "--list", timeout=60).stdout.split()
    build_stand_ins(*names)
    for tag, dockerfile in (("otelproc:latest", "Dockerfile"), ("otelproc-demo:latest", "demo/Dockerfile")):
        run("podman", "build", "-q", "-t", tag, "-f", dockerfile, ".", timeout=1800)
    return [*names, "otelproc:latest", "otelproc-demo:latest"]


def host_state() -> dict[str, Any]:
    """What cluster.sh changes on this machine and must put back: its files, mounts, network devices,
    iptables rules (counters aside) and processes."""

    def counters_aside(saved: str) -> list[str]:
        return [re.sub(r"\[\d+:\d+\]", "", line) for line in saved.splitlines() if not line.startswith("#")]

    def commands() -> set[str]:
        names = ("etcd", "kube-", "kubelet", "coredns", "containerd-shim")
        return {p.name() for p in psutil.process_iter() if p.name().startswith(names)}

    return {
        "files": [
            p
            for p in ("/var/lib/kubelet", "/var/lib/otelproc-k8s", "/run/otelproc-k8s", NODE_STATE)
            if Path(p).exists()
        ],
        "mounts": sorted(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()),
        "links": sorted(psutil.net_if_addrs()),
        **{tool: counters_aside(saved) for tool, saved in iptables_rules().items()},
        "processes": commands(),
    }


@pytest.fixture(scope="module")
def cluster(images: list[str], pin_root: PinRoot) -> Iterator[Cluster]:
    """cluster.sh up, the images loaded; at the end cluster.sh down, which must leave nothing. (The session's
    bpffs, pin_root, is mounted first, so that the mounts compared before and after are the cluster's alone.)"""
    for script, what in (
        ("build-kubernetes.sh", "Kubernetes"),
        ("build-coredns.sh", "CoreDNS"),
        ("fetch-etcd.sh", "etcd"),
    ):
        built_by(CLUSTER_SCRIPT.parent / script, what)
    before = host_state()
    up = subprocess.run([str(CLUSTER_SCRIPT), "up"], capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        cluster = Cluster(up.stdout.strip())
        load = subprocess.run([str(CLUSTER_SCRIPT), "load", *images], capture_output=True, text=True, timeout=600)
        assert load.returncode == 0, load.stderr[-3000:]
        yield cluster
    finally:
        down = subprocess.run([str(CLUSTER_SCRIPT), "down"], capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, down.stderr[-3000:]
        after = host_state()
        left = {k: (sorted(set(before[k]) - set(after[k])), sorted(set(after[k]) - set(before[k]))) for k in before}
        assert after == before, (
            f"cluster.sh down did not put back (was, is): { {k: v for k, v in left.items() if v != ([], [])} }"
        )


@pytest.fixture(scope="module")
def backend(cluster: Cluster) -> Iterator[str]:
    """docs/deployment.md's steps before otelproc: the namespace, the ConfigMaps, Prometheus, Jaeger and the
    Collector; Jaeger's query, port-forwarded."""
    cluster.apply(KUBERNETES / "namespace.yaml")
    cluster.kubectl(
        "-n", NAMESPACE, "create", "configmap", "jaeger-config",
        f"--from-file={REPO / 'deploy/jaeger/all-in-one.yaml'}", f"--from-file={REPO / 'deploy/jaeger/monitor.yaml'}",
    )  # fmt: skip
    cluster.kubectl(
        "-n",
        NAMESPACE,
        "create",
        "configmap",
        "prometheus-rules",
        f"--from-file={REPO / 'deploy/prometheus/rules.yml'}",
    )
    cluster.apply(*(KUBERNETES / f"{name}.yaml" for name in ("prometheus", "jaeger", "collector")))
    # "on every node that runs otelproc": the seccomp profile, as the docs' install command puts it
    profile = REPO / "deploy" / "seccomp" / "otelproc.json"
    subprocess.run(["install", "-D", "-m", "0644", str(profile), "/var/lib/kubelet/seccomp/otelproc.json"], check=True)
    for workload in ("deployment/prometheus", "deployment/jaeger", "deployment/otel-collector"):
        cluster.rollout(workload)
    with cluster.port_forward("service/jaeger", 16686) as jaeger:
        yield jaeger


def requests_and_workers(
    cluster: Cluster, jaeger: str, since: datetime.datetime, pod: dict[str, Any]
) -> list[JaegerSpan]:
    """Requests to the demo through its Service (port-forwarded); the spans of the pod's workers and of the
    requests, once all are in Jaeger."""
    served: set[int] = set()
    with cluster.port_forward("service/demo", 8000) as demo:
        wait_for(lambda: httpx.get(demo, timeout=10).status_code == 200, "the demo's answer", timeout=60)
        for path in ["/"] * 12 + ["/spawn"]:
            response = httpx.get(f"{demo}{path}", timeout=30)
            assert response.status_code == 200, response.text
            served.add(response.json()["worker"])
    name = pod["metadata"]["name"]

    def arrived() -> list[JaegerSpan]:
        spans = [s for s in spans_while_up(jaeger, "demo", since) if s.resource.get("k8s.pod.name") == name]
        started = {s.attributes.get("process.pid") for s in spans if s.role == "started"}
        return spans if len(request_spans(spans)) >= 13 and len(started) >= len(served) else []

    return wait_for(arrived, f"13 request spans and {len(served)} workers' spans of pod {name} in Jaeger", 120)


def assert_linked_with_pod_metadata(spans: list[JaegerSpan], pod: dict[str, Any]) -> None:
    """Every span of the demo (its workers', the /spawn child's, its requests') names its pod, and each request
    links to its worker's process span, which names the demo's container."""
    meta = pod["metadata"]
    expected = {
        "k8s.pod.name": meta["name"],
        "k8s.pod.uid": meta["uid"],
        "k8s.namespace.name": NAMESPACE,
        "k8s.node.name": NODE,
        "k8s.container.name": "demo",
        "k8s.deployment.name": "demo",
    }
    for span in spans:
        assert {k: span.resource.get(k) for k in expected} == expected, (span.name, span.resource)
    processes = {(s.trace_id, s.span_id): s for s in process_spans(spans)}
    demo_id = container_id(pod, "demo")
    requests = request_spans(spans)
    for request in requests:
        (worker,) = [processes[(t, s)] for t, s, _ in request.links if (t, s) in processes]
        assert worker.attributes["otelproc.process.key"] == request.attributes["otelproc.process.key"]
        assert worker.resource["container.id"] == demo_id


def killed_request_reaches_its_trace(
    cluster: Cluster,
    jaeger: str,
    since: datetime.datetime,
    pod: dict[str, Any],
    pid_seen: Callable[[psutil.Process], int],
    otelproc: str,
) -> None:
    """A request in flight when its worker is SIGKILLed reaches its caller's trace, ended by the worker's death,
    under the worker's pod, and linked to the worker's process span. pid_seen: the worker's pid as the
    otelproc that tracks it names it (in the pod's pid namespace for the sidecar, the node's for the DaemonSet);
    otelproc: the label selector of the pods whose otelproc container tracks it (its log, if the span is missing)."""
    with cluster.port_forward("service/demo", 8000) as demo:
        caller = Caller(demo, "slow")
        worker = serving_worker(container_id(pod, "demo"), 8000)
        worker_pid = pid_seen(worker)
        # otelproc must have opened the worker's span region while the worker lived (docs/correlation.md):
        # a worker killed before otelproc caught up with its start loses its spans (counted, region_gone).
        (tracker,) = cluster.pods(otelproc)
        holder = container_process(tracker, "otelproc")
        wait_for(lambda: holds_region(holder, worker.pid), "otelproc to hold the worker's span region", 20)
        worker.kill()

        def killed_request() -> list[JaegerSpan]:
            return [
                s for s in spans_while_up(jaeger, "demo", since) if s.trace_id == caller.trace_id and s.kind == SERVER
            ]

        try:
            (killed,) = wait_for(
                killed_request, "the /slow request its worker was killed in, in its caller's trace", 60
            )
        except AssertionError as missing:
            log = cluster.kubectl("-n", NAMESPACE, "logs", "-l", otelproc, "-c", "otelproc", "--tail=30", check=False)
            raise AssertionError(f"{missing}; worker {worker.pid}; otelproc's log:\n{log.stdout}{log.stderr}") from None
    assert killed.parent_span_id == caller.parent_id and path_of(killed) == "/slow"
    assert killed.status_code == STATUS_ERROR and killed.status_message.startswith("killed by SIGKILL"), killed
    assert killed.attributes["otelproc.span.ended_by"] == "process death"
    assert killed.resource.get("k8s.pod.name") == pod["metadata"]["name"]
    (worker_span,) = [
        s
        for s in spans_while_up(jaeger, "demo", since)
        if s.role == "started" and s.attributes.get("process.pid") == worker_pid
    ]
    assert [(t, s) for t, s, _ in killed.links] == [(worker_span.trace_id, worker_span.span_id)], "linked to its worker"


def test_kubectl_apply_the_sidecar_every_span_names_its_pod_and_a_new_pod_its_own(cluster, backend):
    since = datetime.datetime.now(datetime.timezone.utc)
    cluster.apply(KUBERNETES / "sidecar.yaml")
    cluster.rollout("deployment/demo")
    (pod,) = cluster.pods("app=demo")
    # The kubelet ran otelproc under the Localhost profile (Seccomp: 2, a filter), not unconfined.
    assert "Seccomp:\t2" in Path(f"/proc/{container_process(pod, 'otelproc')}/status").read_text()
    assert_linked_with_pod_metadata(requests_and_workers(cluster, backend, since, pod), pod)
    # otelproc, in its own container of the pod (shareProcessNamespace), reads the worker's span region.
    killed_request_reaches_its_trace(cluster, backend, since, pod, pid_inside, "app=demo")

    # The killed worker is a process metric with its workload (docs/deployment.md, "Process metrics"): the
    # Collector's spanmetrics, after k8sattributes, remote-written to prometheus.yaml's Prometheus.
    with cluster.port_forward("service/prometheus", 9090) as url:
        prometheus = Prometheus(url)
        killed_in_demo = (
            'sum(traces_span_metrics_calls_total{k8s_namespace_name="otelproc-demo",k8s_deployment_name="demo",'
            'span_name="uvicorn worker",otelproc_exit_outcome="signal",error_type="SIGKILL"})'
        )

        def counted() -> bool:
            try:
                return prometheus.value(killed_in_demo) >= 1
            except httpx.HTTPError:
                return False

        wait_for(counted, "the killed worker in Prometheus", timeout=120)  # 15 s flush, then remote write
    # Jaeger's Monitor tab (jaeger.yaml's PROMETHEUS_URL) reads it.
    operations, errors = monitor_error_operations(backend, "demo")
    assert "uvicorn worker" in operations, errors

    # The Deployment replaces a deleted pod; the new pod's processes and requests carry the new pod's name.
    cluster.kubectl("-n", NAMESPACE, "delete", "pod", pod["metadata"]["name"])
    cluster.rollout("deployment/demo")
    (new_pod,) = cluster.pods("app=demo")
    assert new_pod["metadata"]["name"] != pod["metadata"]["name"]
    again = datetime.datetime.now(datetime.timezone.utc)
    assert_linked_with_pod_metadata(requests_and_workers(cluster, backend, again, new_pod), new_pod)
    cluster.kubectl("delete", "-f", str(KUBERNETES / "sidecar.yaml"))  # its preStop hook detaches the probe
    wait_for(lambda: not cluster.pods("app=demo"), "the sidecar's pods gone", timeout=120)


def app_alone(tmp: Path) -> Path:
    """The demo Deployment of sidecar.yaml without otelproc's container: a service as a user of the DaemonSet
    runs it (one otelproc per node, none in the pod)."""
    deployment, service = documents(KUBERNETES / "sidecar.yaml")
    spec = deployment["spec"]["template"]["spec"]
    spec["containers"] = [c for c in spec["containers"] if c["name"] != "otelproc"]
    del spec["shareProcessNamespace"]
    path = tmp / "demo-alone.yaml"
    path.write_text(yaml.safe_dump_all([deployment, service]))
    return path


def detach_all(cluster: Cluster, selector: str) -> None:
    """docs/deployment.md's step before removing the DaemonSet: `otelproc detach` in each of its pods."""
    for pod in cluster.pods(selector):
        cluster.kubectl("-n", NAMESPACE, "exec", pod["metadata"]["name"], "--", "otelproc", "detach")


@pytest.mark.parametrize("how", ["kubectl apply", "helm install"])
def test_the_daemonset_gives_pod_metadata_to_a_pods_processes_and_none_to_the_nodes(
    cluster, backend, how, test_python, tmp_path
):
    since = datetime.datetime.now(datetime.timezone.utc)
    node_state_existed = Path(NODE_STATE).exists()
    if how == "kubectl apply":
        cluster.apply(KUBERNETES / "daemonset.yaml")
        selector = "app=otelproc"
    else:
        helm = built_by(REPO / "deploy" / "helm" / "build.sh", "Helm")
        result = subprocess.run(
            [helm, "install", "otelproc", str(CHART), "-n", NAMESPACE, "--wait", "--timeout", "4m"],
            capture_output=True,
            text=True,
            timeout=300,
            env=cluster.env,
        )
        assert result.returncode == 0, result.stderr + cluster.describe_pods()
        selector = "app.kubernetes.io/name=otelproc"
    try:
        cluster.rollout("daemonset/otelproc")
        cluster.apply(app_alone(tmp_path))
        cluster.rollout("deployment/demo")
        (pod,) = cluster.pods("app=demo")
        assert_linked_with_pod_metadata(requests_and_workers(cluster, backend, since, pod), pod)
        # otelproc, in the DaemonSet's pod (hostPID), reads the span region of a worker in another pod.
        killed_request_reaches_its_trace(cluster, backend, since, pod, lambda worker: worker.pid, selector)

        # A process on the node, outside any pod: its span, and no pod's name on it.
        marker = f"on-the-node-{os.getpid()}-{time.monotonic_ns()}"
        node_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACE"))}
        node_env["OTEL_SERVICE_NAME"] = "node-process"
        subprocess.run([test_python, "-c", "import sys", marker], env=node_env, check=True, timeout=30)

        def node_span() -> list[JaegerSpan]:
            return [
                s
                for s in spans_while_up(backend, "node-process", since)
                if s.role == "lifetime" and marker in str(s.attributes.get("process.command_args"))
            ]

        (span,) = wait_for(node_span, f"the lifetime span of the node's process {marker}", timeout=60)
        assert not {k for k in span.resource if k.startswith("k8s.")}, span.resource
        assert "container.id" not in span.resource
    finally:
        detach_all(cluster, selector)
        if how == "kubectl apply":
            cluster.kubectl("delete", "-f", str(KUBERNETES / "daemonset.yaml"))
        else:
            subprocess.run([helm, "uninstall", "otelproc", "-n", NAMESPACE, "--wait"], env=cluster.env, timeout=300)
        cluster.kubectl("-n", NAMESPACE, "delete", "deployment", "demo", "--ignore-not-found")
        if not node_state_existed:
            shutil.rmtree(NODE_STATE, ignore_errors=True)
