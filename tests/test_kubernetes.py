"""deploy/kubernetes/ for real: strict decoding with the Kubernetes API's Go types, the Collector's
config under the Collector the manifests name, and both otelproc pod specs under `podman kube play`.

No cluster runs here. What podman 4.3's kube play cannot play is given to it another way, in a copy
of the manifest the test writes, and named in PODMAN_GAPS (docs/deployment.md says the same):
the committed manifests keep every field a real cluster needs. Everything listens on loopback: the
played pods use the host's network, and export to a receiver of the test's own.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from support import REPO
from support.callers import Caller, pid_inside, serving_worker
from support.deploy import CONTRIB_MANIFEST, contrib_collector, find, validate
from support.jaeger import wait_for
from support.ports import free_port
from support.regions import holds_region
from support.sidecar import PinRoot
from support.subjects import TEST_COMM

KUBERNETES = REPO / "deploy" / "kubernetes"
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
SECCOMP_DIR = REPO / "deploy" / "seccomp"
SECCOMP_PROFILE = "otelproc.json"
IMAGES_SCRIPT = REPO / "deploy" / "images" / "build.sh"

# What podman 4.3's kube play does not do, and how the test gives it instead (docs/deployment.md).
PODMAN_GAPS = {
    "hostPID": 'ignored (the pod gets a pid namespace of its own): the test sets pidns="host" in a '
    "containers.conf of its own (CONTAINERS_CONF) for the kube play of the DaemonSet's pod",
    "seccompProfile": "securityContext.seccompProfile is ignored: the test adds the older annotation "
    "container.seccomp.security.alpha.kubernetes.io/<container>: localhost/otelproc.json "
    "and --seccomp-profile-root deploy/seccomp",
    "ports": 'containerPort with hostNetwork is refused ("PortMappings can only be used with Bridge or '
    "slirp4netns networking\"): the test's copy, on the host's network, drops them",
    "probes": "httpGet probes become podman healthchecks, which need systemd timers (none here): they "
    "are created but never run; the test asks /readyz itself",
    "preStop": "lifecycle hooks do not run on kube play --down: the test runs `otelproc detach` itself",
    "kind DaemonSet": "not played: the test plays its pod template as a Pod",
    "$(VAR)": "env values are not expanded (OTEL_RESOURCE_ATTRIBUTES stays k8s.pod.uid=$(POD_UID)): the "
    "test's copy gives metadata.uid a uid of its own and expands the references, as the kubelet does",
}


# --- strict decoding ---------------------------------------------------------------------------


def test_every_manifest_decodes_strictly_with_the_kubernetes_types(validator):
    result = validate(validator, *MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    documents = sum(1 for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc)
    assert result.stdout.count(": ok\n") == documents, result.stdout


@pytest.mark.parametrize(
    ("where", "edit", "field"),
    [
        # securityContext one level up, on the pod: a pod's has no readOnlyRootFilesystem
        (
            "daemonset.yaml",
            ("      hostPID: true\n", "      hostPID: true\n      readOnlyRootFilesystem: true\n"),
            'unknown field "spec.template.spec.readOnlyRootFilesystem"',
        ),
        # a typo'd key
        (
            "sidecar.yaml",
            ("shareProcessNamespace:", "shareProcessNamspace:"),
            'unknown field "spec.template.spec.shareProcessNamspace"',
        ),
        # the seccomp profile on the container, not in its securityContext
        (
            "daemonset.yaml",
            (
                "          securityContext:\n",
                "          seccompProfile: {type: RuntimeDefault}\n          securityContext:\n",
            ),
            'unknown field "spec.template.spec.containers[0].seccompProfile"',
        ),
    ],
    ids=["misplaced", "typo", "wrong-level"],
)
def test_a_misplaced_or_unknown_field_fails(validator, tmp_path, where, edit, field):
    text = (KUBERNETES / where).read_text()
    assert text.count(edit[0]) == 1
    broken = tmp_path / where
    broken.write_text(text.replace(edit[0], edit[1]))
    result = validate(validator, broken)
    assert result.returncode == 1
    assert field in result.stdout, result.stdout


# --- the Collector -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def collector() -> str:
    return contrib_collector()


def test_the_collector_image_is_the_distribution_built_here():
    (container,) = find(KUBERNETES / "collector.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    dist = yaml.safe_load(CONTRIB_MANIFEST.read_text())["dist"]
    assert container["image"] == f"otel/opentelemetry-collector-contrib:{dist['version']}"
    assert dist["name"] == "otelcol-contrib"
    modules = [c["gomod"] for c in yaml.safe_load(CONTRIB_MANIFEST.read_text())["processors"]]
    assert any("/processor/k8sattributesprocessor " in m for m in modules)


def test_the_collector_config_passes_validate(collector, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(find(KUBERNETES / "collector.yaml", "ConfigMap")["data"]["config.yaml"])
    (container,) = find(KUBERNETES / "collector.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    given = {e["name"]: e["value"] for e in container["env"] if "value" in e}  # and POD_NAME, from the pod
    env = {**os.environ, **given, "POD_NAME": "otel-collector-5d8f7c9b4-x2x7q"}
    result = subprocess.run([collector, "validate", "--config", str(config)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    # validate reads the processor's settings: a misspelt one fails
    config.write_text(config.read_text().replace("pod_association:", "pod_asociation:"))
    result = subprocess.run([collector, "validate", "--config", str(config)], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "invalid keys: pod_asociation" in result.stderr


def test_k8sattributes_finds_pods_by_container_id_and_may_read_what_it_needs():
    config = yaml.safe_load(find(KUBERNETES / "collector.yaml", "ConfigMap")["data"]["config.yaml"])
    k8s = config["processors"]["k8sattributes"]
    first = k8s["pod_association"][0]["sources"]
    assert first == [{"from": "resource_attribute", "name": "container.id"}]
    assert {"k8s.pod.name", "k8s.namespace.name", "k8s.deployment.name", "k8s.daemonset.name"} <= set(
        k8s["extract"]["metadata"]
    )
    traces = config["service"]["pipelines"]["traces"]["processors"]
    # otelproc's container.id is a span attribute: moved to the resource before k8sattributes looks
    assert config["processors"]["groupbyattrs/container"]["keys"] == ["container.id"]
    assert traces.index("groupbyattrs/container") < traces.index("k8sattributes")
    deployment = find(KUBERNETES / "collector.yaml", "Deployment")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    binding = find(KUBERNETES / "collector.yaml", "ClusterRoleBinding")
    assert {"kind": "ServiceAccount", "name": account, "namespace": "otelproc-demo"} in binding["subjects"]
    role = find(KUBERNETES / "collector.yaml", "ClusterRole", binding["roleRef"]["name"])
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert granted == {("", "pods"): {"get", "list", "watch"}, ("apps", "replicasets"): {"get", "list", "watch"}}


# --- podman kube play ---------------------------------------------------------------------------


def podman(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.fixture(scope="session")
def images() -> None:
    """otelproc:latest and otelproc-demo:latest built from the repository's Dockerfiles, on the stand-in bases."""
    assert IMAGES_SCRIPT.exists(), f"{IMAGES_SCRIPT} builds the stand-in base images"
    subprocess.run([str(IMAGES_SCRIPT), "debian:bookworm-slim", "python:3.11-slim-bookworm"], check=True)
    for tag, dockerfile in (("otelproc:latest", "Dockerfile"), ("otelproc-demo:latest", "demo/Dockerfile")):
        result = podman("build", "-q", "-t", tag, "-f", dockerfile, str(REPO), timeout=900)
        assert result.returncode == 0, result.stderr[-2000:]


def set_env(container: dict[str, Any], **values: str) -> None:
    env = [e for e in container.get("env", []) if e["name"] not in values]
    container["env"] = env + [{"name": k, "value": v} for k, v in values.items()]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def on_loopback(spec: dict[str, Any], pin_root: PinRoot, endpoint: str, health_port: int) -> None:
    """The test's copy of a pod spec: the host's network, exports to the test's receiver, the session's
    bpffs, and the seccomp profile as podman 4.3 reads it."""
    spec["hostNetwork"] = True
    assert pin_root.path is not None, "the kube play tests pin in the session's bpffs"
    for volume in spec["volumes"]:
        if volume["name"] == "bpffs":
            volume["hostPath"]["path"] = str(pin_root.path)
    for container in spec["containers"]:
        container.pop("ports", None)  # PODMAN_GAPS["ports"]
        for probe in ("livenessProbe", "readinessProbe"):
            if "httpGet" in container.get(probe, {}):
                container[probe]["httpGet"]["port"] = health_port
            elif "tcpSocket" in container.get(probe, {}):
                container.pop(probe)
        if "OTEL_EXPORTER_OTLP_ENDPOINT" in env_of(container):
            set_env(container, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)


def expand_env(spec: dict[str, Any], pod_uid: str) -> None:
    """PODMAN_GAPS["$(VAR)"]: metadata.uid is pod_uid; $(NAME) of an earlier variable is its value."""
    for container in spec["containers"]:
        values: dict[str, str] = {}
        for variable in container.get("env", []):
            if variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.uid":
                variable.pop("valueFrom")
                variable["value"] = pod_uid
            elif "value" in variable:
                variable["value"] = re.sub(r"\$\((\w+)\)", lambda m: values.get(m[1], m[0]), variable["value"])
            if "value" in variable:
                values[variable["name"]] = variable["value"]


def seccomp_annotations(spec: dict[str, Any]) -> dict[str, str]:
    """PODMAN_GAPS["seccompProfile"]: each container's Localhost profile as the annotation podman reads."""
    found = {}
    for container in spec["containers"]:
        profile = container.get("securityContext", {}).get("seccompProfile")
        if profile:
            assert profile == {"type": "Localhost", "localhostProfile": SECCOMP_PROFILE}
            found[f"container.seccomp.security.alpha.kubernetes.io/{container['name']}"] = (
                f"localhost/{SECCOMP_PROFILE}"
            )
    return found


class Played:
    """One `podman kube play` of a file the test wrote; down, and its probe detached, at the end."""

    def __init__(self, manifest: dict[str, Any], directory: Path, pod: str, env: dict[str, str] | None = None):
        self.path = directory / f"{pod}.yaml"
        self.path.write_text(yaml.safe_dump(manifest))
        self.pod = pod
        self.env = env
        assert (SECCOMP_DIR / SECCOMP_PROFILE).exists(), (
            "deploy/seccomp/otelproc.json, the seccomp profile the manifests name"
        )
        result = podman(
            "kube", "play", "--replace", "--seccomp-profile-root", str(SECCOMP_DIR), str(self.path), env=env
        )
        assert result.returncode == 0, result.stderr

    def container(self, name: str) -> str:
        return f"{self.pod}-{name}"

    def logs(self, name: str) -> str:
        result = podman("logs", self.container(name))
        return result.stdout + result.stderr

    def exec(self, name: str, *command: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.container(name), *command, timeout=60)

    def down(self) -> None:
        # PODMAN_GAPS["preStop"]: what the sidecar's hook does, and what the DaemonSet's docs say to do
        self.exec("otelproc", "otelproc", "detach")
        podman("kube", "down", str(self.path), env=self.env)


def wait_ready(port: int, played: Played, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"otelproc never ready on :{port}; its log:\n{played.logs('otelproc')[-3000:]}")


def host_pid_conf(directory: Path) -> Path:
    """PODMAN_GAPS["hostPID"]: the system's containers.conf drop-ins, with pidns = "host"."""
    drop_ins = sorted(Path("/etc/containers/containers.conf.d").glob("*.conf"))
    text = "\n".join(p.read_text() for p in drop_ins)
    if "[containers]" in text:
        text = text.replace("[containers]", '[containers]\npidns = "host"', 1)
    else:
        text = '[containers]\npidns = "host"\n' + text
    conf = directory / "containers.conf"
    conf.write_text(text)
    return conf


@pytest.fixture
def kube_play(tmp_path: Path) -> Iterator[Any]:
    played: list[Played] = []

    def play(manifest: dict[str, Any], pod: str, env: dict[str, str] | None = None) -> Played:
        p = Played(manifest, tmp_path, pod, env)
        played.append(p)
        return p

    try:
        yield play
    finally:
        for p in played:
            p.down()


def test_the_daemonset_pod_exports_the_span_of_a_host_process(
    images, grpc_receiver, pin_root, test_python, kube_play, tmp_path
):
    daemonset = yaml.safe_load((KUBERNETES / "daemonset.yaml").read_text())
    template = copy.deepcopy(daemonset["spec"]["template"])
    spec = template["spec"]
    assert spec["hostPID"] is True
    health = free_port()
    on_loopback(spec, pin_root, grpc_receiver.endpoint, health)
    (otelproc,) = spec["containers"]
    pin_dir = "/sys/fs/bpf/" + Path(pin_root.new_dir()).name
    # Only this session's subjects (TEST_COMM), not every Python process on the host
    set_env(
        otelproc,
        OTELPROC_HEALTH_PORT=str(health),
        OTELPROC_MATCH=TEST_COMM,
        OTELPROC_ADOPT="false",
        OTELPROC_PIN_DIR=pin_dir,
    )
    pod = f"otelproc-ds-{uuid.uuid4().hex[:6]}"
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",  # PODMAN_GAPS["kind DaemonSet"]
        "metadata": {"name": pod, "labels": template["metadata"]["labels"], "annotations": seccomp_annotations(spec)},
        "spec": spec,
    }
    played = kube_play(manifest, pod, env={"CONTAINERS_CONF": str(host_pid_conf(tmp_path))})
    wait_ready(health, played)

    subject = subprocess.Popen([test_python, "-c", "import time; time.sleep(0.3)"])
    subject.wait(timeout=10)
    (span,) = grpc_receiver.wait_for(
        lambda spans: [s for s in spans if s.attributes.get("process.pid") == subject.pid], timeout=20
    )
    assert span.attributes["otelproc.span"] == "lifetime"
    assert span.attributes["process.exit.code"] == 0

    # A span in flight in a host process killed under it (the helper in code, a span region of its own):
    # otelproc, in the DaemonSet's pod (hostPID), holds the region and sends the span after the kill.
    app = subprocess.Popen(
        [test_python, "-c", IN_FLIGHT_APP, grpc_receiver.endpoint],
        env={**os.environ, "PYTHONPATH": str(REPO), "OTELPROC_MATCH": TEST_COMM},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stdout is not None and app.stdout.readline().split() == ["in", "flight"]
        otelproc_pid = int(podman("inspect", "--format", "{{.State.Pid}}", played.container("otelproc")).stdout)
        wait_for(lambda: holds_region(otelproc_pid, app.pid), "otelproc to hold the app's span region", timeout=20)
        app.kill()
    finally:
        app.wait(timeout=10)
    (killed,) = grpc_receiver.wait_for(lambda spans: [s for s in spans if s.name == "GET /slow"], timeout=20)
    assert killed.status == "ERROR" and killed.status_message.startswith("killed by SIGKILL"), killed
    assert killed.resource.get("service.name") == "in-flight-app"
    (link,) = [(t, s) for t, s, attributes in killed.links if attributes.get("otelproc.link") == "process"]
    assert grpc_receiver.process_spans()[link].attributes["process.pid"] == app.pid, "linked to its process"


# A process with the app-side helper in code and a span in flight; prints "in flight", then waits to be killed.
IN_FLIGHT_APP = """
import sys, time
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind
import otelproc.app

provider = TracerProvider(resource=Resource({"service.name": "in-flight-app"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(sys.argv[1], insecure=True)))
otelproc.app.enable(provider)
span = provider.get_tracer("in-flight").start_span("GET /slow", kind=SpanKind.SERVER)
print("in flight", flush=True)
time.sleep(120)
"""


def test_the_sidecar_deployment_exports_the_demos_spans(images, grpc_receiver, pin_root, kube_play):
    deployment = yaml.safe_load_all((KUBERNETES / "sidecar.yaml").read_text()).__next__()
    assert deployment["kind"] == "Deployment"
    spec = deployment["spec"]["template"]["spec"]
    assert spec["shareProcessNamespace"] is True
    health, http = free_port(), free_port()
    on_loopback(spec, pin_root, grpc_receiver.endpoint, health)
    containers = {c["name"]: c for c in spec["containers"]}
    set_env(containers["otelproc"], OTELPROC_HEALTH_PORT=str(health))
    # the image's command, on a free loopback port (the host's network is shared)
    demo_command = podman("image", "inspect", "--format", "{{json .Config.Cmd}}", "otelproc-demo:latest").stdout
    command = yaml.safe_load(demo_command)
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(http)
    containers["demo"]["args"] = command
    pod_uid = str(uuid.uuid4())
    expand_env(spec, pod_uid)
    assert env_of(containers["otelproc"])["OTELPROC_PIN_DIR"] == f"/sys/fs/bpf/otelproc-pod-{pod_uid}"
    pod = f"demo-{uuid.uuid4().hex[:6]}"
    deployment["metadata"]["name"] = pod
    deployment["spec"]["template"]["metadata"]["annotations"] = seccomp_annotations(spec)
    played = kube_play(deployment, pod + "-pod-0")
    wait_ready(health, played)

    marker = f"kube-play-{uuid.uuid4().hex[:8]}"
    result = played.exec("demo", "python3", "-c", f"import sys; sys.argv.append({marker!r})")
    assert result.returncode == 0, result.stderr
    (worker_span,) = grpc_receiver.wait_for(
        lambda spans: [s for s in spans if marker in str(s.attributes.get("process.command_args"))], timeout=20
    )
    assert worker_span.attributes["otelproc.span"] == "lifetime"
    assert worker_span.resource.get("k8s.pod.uid") == pod_uid  # k8sattributes finds the pod by it

    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http}/", timeout=5).read()
            break
        except OSError:
            assert time.monotonic() < deadline, played.logs("demo")[-3000:]
            time.sleep(1)
    requests = grpc_receiver.wait_for(
        lambda spans: [
            s for s in spans if s.service == "demo" and s.attributes.get("otelproc.span") is None and s.kind == 2
        ],
        timeout=30,
    )  # SERVER
    assert requests[0].resource.get("k8s.pod.uid") == pod_uid

    # A request in flight when its worker is killed reaches its caller's trace: otelproc, in its own
    # container of the pod (shareProcessNamespace), reads the span region of the demo's worker.
    demo_id = podman("inspect", "--format", "{{.Id}}", played.container("demo")).stdout.strip()
    caller = Caller(f"http://127.0.0.1:{http}", "slow")
    worker = serving_worker(demo_id, http)
    worker_pid = pid_inside(worker)  # as otelproc, in the pod's pid namespace, names it
    worker.kill()
    (killed,) = grpc_receiver.wait_for(
        lambda spans: [s for s in spans if s.trace_id == caller.trace_id and s.kind == 2], timeout=30
    )
    assert killed.parent_span_id == caller.parent_id
    assert killed.status == "ERROR" and killed.status_message.startswith("killed by SIGKILL"), killed
    assert killed.attributes["otelproc.span.ended_by"] == "process death"
    assert killed.resource.get("k8s.pod.uid") == pod_uid, "exported under the worker's own resource"
    (link,) = [(t, s) for t, s, attributes in killed.links if attributes.get("otelproc.link") == "process"]
    assert grpc_receiver.process_spans()[link].attributes["process.pid"] == worker_pid, "linked to its worker"
