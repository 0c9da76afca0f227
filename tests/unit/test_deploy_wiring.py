"""The deployment files fit together: compose, Kubernetes, Dockerfiles and the Collector config.

No container runs here. The files are parsed and followed the way Docker, Kubernetes
and the Collector would follow them: an endpoint must name a service that exists and a
port it listens on, a scope must fit the pid namespace the sidecar is given, the
capabilities must be the ones otelproc checks for. No root, no kernel, no binary: that the
Jaeger binary takes the configs is tests/test_jaeger_configs.py's.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any

import pytest
import yaml

from otelproc.config import options_for
from otelproc.kernel.checks import CAP_NAMES, RUN_CAPS
from support import REPO
from support.deploy import (
    COMPOSE,
    JAEGER_IMAGE_ENV,
    collector_config,
    compose_service,
    expand,
    host_port,
    otlp_receiver,
)
from support.jaeger import ALL_IN_ONE, BADGER, COLLECTOR_CONFIG, MONITOR
from support.prometheus import CONFIG as PROMETHEUS_CONFIG
from support.prometheus import RULES as PROMETHEUS_RULES

KUBERNETES = [
    doc
    for f in sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
    for doc in yaml.safe_load_all(f.read_text())
    if doc
]
RUN_CAP_NAMES = {CAP_NAMES[c].removeprefix("CAP_") for c in RUN_CAPS}
BPFFS = "/sys/fs/bpf"  # where the deployments give otelproc the host's bpffs


# --- following the files --------------------------------------------------------------------


def k8s_collector_config() -> str:
    """The Collector config of deploy/kubernetes/collector.yaml's ConfigMap (the one its Deployment mounts)."""
    return k8s("ConfigMap", "otel-collector-config")["data"]["config.yaml"]


def otlp_protocol(env: dict[str, str]) -> str:
    """Which receiver an OpenTelemetry SDK's OTLP exporter talks to, as its variables say."""
    return "http" if env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").startswith("http") else "grpc"


def otelproc_setting(name: str, env: dict[str, str], args: list[str]) -> str:
    """A setting as `otelproc run` resolves it: --flag, else OTELPROC_* variable, else default."""
    (option,) = [o for o in options_for("run") if o.name == name]
    for i, arg in enumerate(args):
        if arg == option.flag:
            return args[i + 1]
        if arg.startswith(option.flag + "="):
            return arg.split("=", 1)[1]
    return env.get(option.env, option.default)


def pid_owner(pid: str) -> str | None:
    """The service whose pid namespace `pid:` joins: "service:NAME", or "container:NAME" naming a service's
    container_name; None for the host's or a namespace of its own."""
    if pid.startswith("service:"):
        return pid.removeprefix("service:")
    if pid.startswith("container:"):
        named = [
            name
            for name, service in COMPOSE["services"].items()
            if service.get("container_name") == pid.removeprefix("container:")
        ]
        assert named, f"pid: {pid} names no service's container_name"
        return named[0]
    return None


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping"
    return {k: str(v) for k, v in env.items()}


def compose_mount(service: dict[str, Any], source: Path) -> str:
    """Where a service mounts a repository file, read-only."""
    for volume in service.get("volumes", []):
        host, target, *mode = volume.split(":")
        if (REPO / host).resolve() == source:
            assert mode == ["ro"], f"{volume}: mount it read-only"
            return target
    raise AssertionError(f"no mount of {source.relative_to(REPO)}")


def k8s(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in KUBERNETES if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"deploy/kubernetes/ should hold one {kind} {name}"
    return found[0]


def k8s_container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (container,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return container


def k8s_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def k8s_container_port(container: dict[str, Any], port: int | str) -> int:
    """A container's port by number or name."""
    for p in container.get("ports", []):
        if port in (p["containerPort"], p.get("name")):
            return p["containerPort"]
    raise AssertionError(f"container {container['name']} has no port {port!r}")


def k8s_service_target(endpoint: str, namespace: str) -> tuple[dict[str, Any], dict[str, Any], int]:
    """The Deployment, container and container port an in-cluster endpoint reaches through its Service."""
    host, port = host_port(endpoint)
    service = k8s("Service", host)
    assert service["metadata"]["namespace"] == namespace, f"{endpoint}: Service {host} is in another namespace"
    entries = [p for p in service["spec"]["ports"] if p["port"] == port]
    assert len(entries) == 1, f"{endpoint}: Service {host} has no port {port}"
    selector = service["spec"]["selector"]
    (deployment,) = [
        d
        for d in KUBERNETES
        if d["kind"] == "Deployment" and d["spec"]["template"]["metadata"]["labels"].items() >= selector.items()
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container, k8s_container_port(container, entries[0].get("targetPort", port))


def otelproc_deployments() -> dict[str, dict[str, Any]]:
    """Each deployment's otelproc: its pid namespace, environment, arguments and capabilities."""
    compose = compose_service("otelproc")
    pid = str(compose.get("pid", ""))
    found = {
        "compose": {
            "pid": "host" if pid == "host" else "shared with a service" if pid_owner(pid) else "own",
            "env": compose_env(compose),
            "args": list(compose.get("command", [])),
            "add": set(compose.get("cap_add", [])),
            "drop": set(compose.get("cap_drop", [])),
            "privileged": compose.get("privileged", False),
        }
    }
    sidecar, daemonset = k8s("Deployment", "demo"), k8s("DaemonSet", "otelproc")
    for name, workload in (("kubernetes sidecar", sidecar), ("kubernetes daemonset", daemonset)):
        pod = workload["spec"]["template"]["spec"]
        container = k8s_container(workload, "otelproc")
        security = container.get("securityContext", {})
        found[name] = {
            "pid": "host"
            if pod.get("hostPID")
            else "shared with a service"
            if pod.get("shareProcessNamespace")
            else "own",
            "env": k8s_env(container),
            "args": container.get("args", []),
            "add": set(security.get("capabilities", {}).get("add", [])),
            "drop": set(security.get("capabilities", {}).get("drop", [])),
            "privileged": security.get("privileged", False),
            "container": container,
            "namespace": workload["metadata"]["namespace"],
        }
    return found


DEPLOYMENTS = otelproc_deployments()


# --- compose --------------------------------------------------------------------------------


def test_compose_otlp_senders_reach_the_collector_receiver():
    collector = compose_service("collector")
    assert collector["image"].startswith("otel/opentelemetry-collector-contrib:")  # spanmetrics
    # The image's default config path: the mounted file is what it runs.
    assert compose_mount(collector, COLLECTOR_CONFIG) == "/etc/otelcol-contrib/config.yaml"
    config = collector_config(COLLECTOR_CONFIG, compose_env(collector))
    for sender in ("otelproc", "demo"):
        env = compose_env(compose_service(sender))
        host, port = host_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        listen_host, listen_port = otlp_receiver(config, otlp_protocol(env))
        assert (host, port) == ("collector", listen_port), sender
        assert listen_host == "0.0.0.0", "the collector container must listen beyond its loopback"


def test_compose_collector_exports_to_jaeger_otlp_grpc():
    collector = compose_service("collector")
    exporter = collector_config(COLLECTOR_CONFIG, compose_env(collector))["exporters"]["otlp/jaeger"]
    host, port = host_port(exporter["endpoint"])
    jaeger = compose_service(host)
    assert jaeger["image"].startswith(("jaegertracing/jaeger:2.", "cr.jaegertracing.io/jaegertracing/jaeger:2."))
    mounted, badger, monitor = (compose_mount(jaeger, path) for path in (ALL_IN_ONE, BADGER, MONITOR))
    assert jaeger["command"] == [f"--config=file:{path}" for path in (mounted, badger, monitor)]
    jaeger_config = collector_config(ALL_IN_ONE, {**JAEGER_IMAGE_ENV, **compose_env(jaeger)})
    assert otlp_receiver(jaeger_config, "grpc") == ("0.0.0.0", port)
    ui_port = int(jaeger_config["extensions"]["jaeger_query"]["http"]["endpoint"].rsplit(":", 1)[1])
    assert f"{ui_port}:{ui_port}" in jaeger["ports"], "the UI is published"


def test_compose_prometheus_scrapes_the_collectors_span_metrics_and_jaeger_reads_it():
    collector = compose_service("collector")
    exporter = collector_config(COLLECTOR_CONFIG, compose_env(collector))["exporters"]["prometheus"]
    listen_host, metrics_port = host_port(exporter["endpoint"])
    assert listen_host == "0.0.0.0"
    prometheus = compose_service("prometheus")
    assert prometheus["image"].startswith("prom/prometheus:v3.")
    config_path = compose_mount(prometheus, PROMETHEUS_CONFIG)
    assert f"--config.file={config_path}" in prometheus["command"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": [f"collector:{metrics_port}"]}]
    # rule_files are relative to the configuration file: the rules are mounted beside it.
    (rules,) = config["rule_files"]
    assert compose_mount(prometheus, PROMETHEUS_RULES) == str(Path(config_path).parent / rules)
    jaeger = compose_service("jaeger")
    assert compose_env(jaeger)["PROMETHEUS_URL"] == "http://prometheus:9090"
    assert "9090:9090" in prometheus["ports"]


def test_compose_jaeger_keeps_its_traces_in_a_volume_its_user_owns():
    jaeger = compose_service("jaeger")
    data_dir = compose_env(jaeger)["JAEGER_DATA_DIR"]
    (volume,) = [v.split(":")[0] for v in jaeger["volumes"] if v.split(":")[1] == data_dir]
    assert volume in COMPOSE["volumes"], f"{data_dir}: a named volume, so that it outlives the container"
    # The image runs as uid 10001 (Jaeger's cmd/jaeger/Dockerfile); a new volume is root's until the
    # one-off Jaeger waits for has given it to that user.
    (owner,) = [
        name
        for name, condition in jaeger["depends_on"].items()
        if condition == {"condition": "service_completed_successfully"}
    ]
    chown = compose_service(owner)
    assert chown["command"] == ["chown", "10001:10001", data_dir]
    assert chown["volumes"] == [f"{volume}:{data_dir}"]


def test_compose_otelproc_watches_the_demo_and_mounts_read_only():
    otelproc, demo = compose_service("otelproc"), compose_service("demo")
    # The demo's pid namespace: its own (joined as service:demo), or one it joins too.
    demo_namespace = demo.get("pid", "service:demo")
    owner = pid_owner(demo_namespace)
    assert otelproc["pid"] == demo_namespace and owner is not None
    assert owner == "demo" or owner in otelproc["depends_on"] and owner in demo["depends_on"]
    assert demo["build"] == {"context": ".", "dockerfile": "demo/Dockerfile"} and otelproc["build"] == "."
    assert otelproc.get("read_only") is True
    for volume in otelproc["volumes"]:
        source, target, *mode = volume.split(":")
        if source == target == BPFFS:
            assert mode == [], f"{volume}: otelproc pins its probe there"
        elif source.startswith("/"):  # a host path
            assert mode == ["ro"], f"{volume}: host paths are mounted read-only"
        else:
            assert target == os.path.dirname(otelproc_setting("state_file", compose_env(otelproc), [])), volume


# --- Kubernetes -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kubernetes sidecar", "kubernetes daemonset"])
def test_kubernetes_otelproc_exports_to_the_collector_receiver(name):
    deployment = DEPLOYMENTS[name]
    _, container, port = k8s_service_target(deployment["env"]["OTEL_EXPORTER_OTLP_ENDPOINT"], deployment["namespace"])
    assert container["image"].startswith("otel/opentelemetry-collector-contrib:")  # k8sattributes
    assert {"name": "config", "mountPath": "/etc/otelcol-contrib", "readOnly": True} in container["volumeMounts"]
    assert container["args"] == ["--config", "/etc/otelcol-contrib/config.yaml"]
    config = yaml.safe_load(expand(k8s_collector_config(), k8s_env(container)))
    assert otlp_receiver(config, otlp_protocol(deployment["env"])) == ("0.0.0.0", port)


def test_kubernetes_demo_app_exports_to_the_same_collector():
    app = k8s_env(k8s_container(k8s("Deployment", "demo"), "demo"))
    sidecar = DEPLOYMENTS["kubernetes sidecar"]["env"]
    assert app["OTEL_EXPORTER_OTLP_ENDPOINT"] == sidecar["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert app["OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"] == "otelproc" and app["OTEL_SERVICE_NAME"] == "demo"


def test_kubernetes_collector_exports_to_jaeger_otlp_grpc():
    collector = k8s("Deployment", "otel-collector")
    (container,) = collector["spec"]["template"]["spec"]["containers"]
    exporter = yaml.safe_load(expand(k8s_collector_config(), k8s_env(container)))["exporters"]["otlp/jaeger"]
    _, jaeger, port = k8s_service_target(exporter["endpoint"], collector["metadata"]["namespace"])
    assert jaeger["args"][0] == "--config=file:/etc/jaeger/all-in-one.yaml"
    jaeger_config = collector_config(ALL_IN_ONE, {**JAEGER_IMAGE_ENV, **k8s_env(jaeger)})
    assert otlp_receiver(jaeger_config, "grpc") == ("0.0.0.0", port)


def test_kubernetes_collector_remote_writes_the_span_metrics_to_prometheus_with_its_rules():
    collector = k8s("Deployment", "otel-collector")
    (container,) = collector["spec"]["template"]["spec"]["containers"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    config = yaml.safe_load(expand(k8s_collector_config(), {**k8s_env(container), "POD_NAME": "otel-collector-1"}))
    pipelines = config["service"]["pipelines"]
    assert "spanmetrics" in pipelines["traces"]["exporters"]
    assert pipelines["metrics/spanmetrics"] == {"receivers": ["spanmetrics"], "exporters": ["prometheusremotewrite"]}
    # The same metrics as collector-config.yaml makes for compose and the local stack.
    shipped = collector_config(COLLECTOR_CONFIG, {})["connectors"]["spanmetrics"]
    connector = config["connectors"]["spanmetrics"]
    for key in ("histogram", "dimensions", "resource_metrics_key_attributes", "aggregation_cardinality_limit"):
        assert connector[key] == shipped[key], key
    exporter = config["exporters"]["prometheusremotewrite"]
    assert exporter["external_labels"] == {"otelcol_replica": "otel-collector-1"}
    url = urlsplit(exporter["endpoint"])
    assert url.path == "/api/v1/write"
    prometheus, server, _ = k8s_service_target(f"{url.hostname}:{url.port}", collector["metadata"]["namespace"])
    assert "--web.enable-remote-write-receiver" in server["args"]
    # Its rules: the ConfigMap prometheus.yaml's header creates from deploy/prometheus/rules.yml,
    # mounted where its configuration's rule_files looks.
    header = (REPO / "deploy" / "kubernetes" / "prometheus.yaml").read_text()
    assert "create configmap prometheus-rules --from-file=deploy/prometheus/rules.yml" in header
    (rules_mount,) = [
        m
        for m in server["volumeMounts"]
        if k8s_volume(prometheus, m).get("configMap", {}).get("name") == "prometheus-rules"
    ]
    config_mount = next(
        m
        for m in server["volumeMounts"]
        if k8s_volume(prometheus, m).get("configMap", {}).get("name") == "prometheus-config"
    )
    prometheus_yml = yaml.safe_load(k8s("ConfigMap", "prometheus-config")["data"]["prometheus.yml"])
    assert f"--config.file={config_mount['mountPath']}/prometheus.yml" in server["args"]
    assert prometheus_yml["rule_files"] == [f"{rules_mount['mountPath']}/{PROMETHEUS_RULES.name}"]


@pytest.mark.parametrize("path", ["jaeger.yaml", "fleet/jaeger.yaml"])
def test_kubernetes_jaeger_reads_prometheus_for_its_monitor_tab(path):
    (deployment,) = [
        d
        for d in yaml.safe_load_all((REPO / "deploy" / "kubernetes" / path).read_text())
        if d and d["kind"] == "Deployment"
    ]
    (jaeger,) = deployment["spec"]["template"]["spec"]["containers"]
    assert jaeger["args"][-1] == f"--config=file:/etc/jaeger/{MONITOR.name}"
    header = (REPO / "deploy" / "kubernetes" / path).read_text()
    assert f"--from-file=deploy/jaeger/{MONITOR.name}" in header
    url = urlsplit(k8s_env(jaeger)["PROMETHEUS_URL"])
    _, server, _ = k8s_service_target(f"{url.hostname}:{url.port}", deployment["metadata"]["namespace"])
    assert server["image"].startswith("prom/prometheus:")


@pytest.mark.parametrize("name", ["kubernetes sidecar", "kubernetes daemonset"])
def test_kubernetes_probes_and_resources(name):
    container = DEPLOYMENTS[name]["container"]
    health_port = int(otelproc_setting("health_port", DEPLOYMENTS[name]["env"], DEPLOYMENTS[name]["args"]) or 0)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and k8s_container_port(container, get["port"]) == health_port, probe
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys() and "memory" in resources["limits"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    state_dir = os.path.dirname(otelproc_setting("state_file", DEPLOYMENTS[name]["env"], DEPLOYMENTS[name]["args"]))
    assert not mounts.pop(state_dir).get("readOnly"), "the state file's directory is writable"
    assert not mounts.pop(BPFFS).get("readOnly"), "the bpffs otelproc pins its probe in is writable"
    assert all(m.get("readOnly") for m in mounts.values()), "everything else is mounted read-only"


def k8s_volume(workload: dict[str, Any], mount: dict[str, Any]) -> dict[str, Any]:
    (volume,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    return volume


def k8s_expand(value: str, container: dict[str, Any]) -> str:
    """Kubernetes' $(VAR) in an env value: VAR must be defined before, here by the downward API."""
    defined: list[str] = []
    for entry in container["env"]:
        if "value" in entry and value == entry["value"]:
            break
        defined.append(entry["name"])
    for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value):
        assert var in defined, f"$({var}) is used before it is defined"
        value = value.replace(f"$({var})", "POD-UID")
    return value


@pytest.mark.parametrize("name", ["kubernetes sidecar", "kubernetes daemonset"])
def test_kubernetes_probe_is_pinned_on_the_nodes_bpffs(name):
    """The pin directory is on the node's bpffs, so the probe outlives the container; a sidecar's is
    the pod's own and goes with the pod (preStop: otelproc detach); the DaemonSet's stays across a
    rolling update, and its state file is on the node too."""
    deployment = DEPLOYMENTS[name]
    container = deployment["container"]
    workload = k8s("Deployment", "demo") if name == "kubernetes sidecar" else k8s("DaemonSet", "otelproc")
    pin_dir = k8s_expand(otelproc_setting("pin_dir", deployment["env"], deployment["args"]), container)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == BPFFS]
    assert pin_dir.startswith(BPFFS + "/") and not mount.get("readOnly")
    assert mount.get("mountPropagation") == "HostToContainer", "a bpffs the node mounts later is seen"
    assert k8s_volume(workload, mount)["hostPath"] == {"path": BPFFS, "type": "Directory"}
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if name == "kubernetes sidecar":
        assert "POD-UID" in pin_dir, "each pod pins in a directory of its own"
        (uid,) = [e for e in container["env"] if e["name"] == "POD_UID"]
        assert uid["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
        assert pre_stop == ["otelproc", "detach"], "the probe goes with the pod"
    else:
        assert pre_stop == [], "a rolling update keeps the probe for the next pod"
        state_dir = os.path.dirname(otelproc_setting("state_file", deployment["env"], deployment["args"]))
        (state,) = [m for m in container["volumeMounts"] if m["mountPath"] == state_dir]
        assert "hostPath" in k8s_volume(workload, state), "the next pod finds the state file"
        text = (REPO / "deploy" / "kubernetes" / "daemonset.yaml").read_text()
        # Every pod of the DaemonSet, by its label: `exec ds/otelproc` would reach one node only.
        selector = ",".join(f"{k}={v}" for k, v in workload["spec"]["selector"]["matchLabels"].items())
        assert f"get pods -l {selector} -o name" in text and "exec {} -- otelproc detach" in text


def test_compose_probe_is_pinned_on_the_hosts_bpffs_and_detach_is_documented():
    otelproc = compose_service("otelproc")
    pin_dir = otelproc_setting("pin_dir", compose_env(otelproc), [])
    assert pin_dir.startswith(BPFFS + "/") and f"{BPFFS}:{BPFFS}" in otelproc["volumes"]
    assert "docker compose exec otelproc otelproc detach" in (REPO / "docker-compose.yml").read_text()


def test_kubernetes_namespace_admits_the_capabilities():
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    namespaces = {d["metadata"]["namespace"] for d in KUBERNETES if d["kind"] not in cluster_scoped}
    (namespace,) = namespaces
    labels = k8s("Namespace", namespace)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


# --- every deployment of otelproc ----------------------------------------------------------


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_scope_fits_the_pid_namespace(name):
    deployment = DEPLOYMENTS[name]
    scope = otelproc_setting("scope", deployment["env"], deployment["args"])
    # In a pid namespace of its own, otelproc would see nothing but itself: no scope fits.
    expected = {"shared with a service": {"pidns", "auto"}, "host": {"host", "auto"}}.get(deployment["pid"], set())
    assert scope in expected, f"{name}: pid namespace {deployment['pid']}, scope {scope}"


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_capabilities_are_what_otelproc_needs_and_no_more(name):
    deployment = DEPLOYMENTS[name]
    assert not deployment["privileged"], "privileged is the documented fallback, not the default"
    assert deployment["drop"] == {"ALL"}
    # Exactly what `otelproc run` checks for; tests/test_privileges.py runs it with just these.
    assert deployment["add"] == RUN_CAP_NAMES, f"otelproc run needs {sorted(RUN_CAP_NAMES)}"


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_otelproc_variables_are_real_settings(name):
    """A misspelt OTELPROC_* variable would be ignored silently; each must be a setting that parses."""
    options = {o.env: o for o in options_for("run")}
    for variable, value in DEPLOYMENTS[name]["env"].items():
        if variable.startswith("OTELPROC_"):
            assert variable in options, f"{name}: {variable} is no setting of `otelproc run`"
            options[variable].parse(value)


# --- images ---------------------------------------------------------------------------------


def dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per stage, with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    )
    stages: list[list[tuple[str, str]]] = []
    for line in filter(str.strip, text.splitlines()):
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), " ".join(arguments.split())))
    return stages


def dockerignored() -> set[str]:
    return {line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")}


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "demo/Dockerfile"])
def test_dockerfile_copies_only_what_the_context_holds(dockerfile):
    for stage in dockerfile_stages(REPO / dockerfile):
        for instruction, arguments in stage:
            if instruction == "COPY" and not arguments.startswith("--from="):
                for source in arguments.split()[:-1]:
                    assert (REPO / source).exists(), f"{dockerfile}: COPY {source}: not in the repository"
                    assert Path(source).parts[0] not in dockerignored(), f"{dockerfile}: {source} is .dockerignored"


def test_dockerfile_builds_the_bpf_object_and_installs_libbpf():
    build, runtime = dockerfile_stages(REPO / "Dockerfile")
    stage_name = build[0][1].split(" AS ")[1]
    assert build[0][1].startswith("debian:bookworm")
    runs = " ".join(args for instruction, args in build if instruction == "RUN")
    assert "clang" in runs and "llvm" in runs and re.search(r"\bmake bpf\b", runs)
    assert runtime[0] == ("FROM", "python:3.11-slim-bookworm")
    runtime_runs = " ".join(args for instruction, args in runtime if instruction == "RUN")
    assert re.search(r"apt-get install .*\blibbpf1\b", runtime_runs) and "pip install" in runtime_runs
    copied = f"--from={stage_name} /src/otelproc/bpf/otelproc.bpf.o otelproc/bpf/otelproc.bpf.o"
    assert ("COPY", copied) in runtime
    # The object is copied in before the package is installed from the same directory.
    assert runtime.index(("COPY", copied)) < [i for i, (ins, args) in enumerate(runtime) if "pip install" in args][0]
    assert runtime[-1] == ("ENTRYPOINT", '["otelproc", "run"]')


def test_demo_image_runs_the_app_under_the_auto_instrumentation_with_the_helper():
    (stage,) = dockerfile_stages(REPO / "demo" / "Dockerfile")
    env = " ".join(args for instruction, args in stage if instruction == "ENV")
    assert "OTEL_SERVICE_NAME=demo" in env and "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=otelproc" in env
    cmd = dict(stage)["CMD"]
    assert cmd.startswith('["opentelemetry-instrument", "uvicorn", "app:app"')
    runs = " ".join(args for instruction, args in stage if instruction == "RUN")
    assert "pip install" in runs and "/src/otelproc" in runs, "otelproc (the helper) from the repository"
