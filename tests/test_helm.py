"""deploy/helm/otelproc, the chart Kubernetes users install otelproc with, under the real Helm (built from
its Go module by deploy/helm/build.sh): `helm lint`, and `helm template` decoded strictly with the
Kubernetes API's types. With its default values the chart renders the DaemonSet of
deploy/kubernetes/daemonset.yaml, so a change to one that the other lacks fails here; each value does
what values.yaml says; bad values fail in one line. `helm install` into a cluster is
tests/test_kubernetes_cluster.py's.
"""

from __future__ import annotations

import copy
import subprocess
from typing import Any

import pytest
import yaml

from otelproc.config import options_for
from support import REPO
from support.deploy import find, validate
from support.jaeger import built_by

CHART = REPO / "deploy" / "helm" / "otelproc"
BUILD = REPO / "deploy" / "helm" / "build.sh"
DAEMONSET = REPO / "deploy" / "kubernetes" / "daemonset.yaml"
NAMESPACE = "otelproc-demo"


@pytest.fixture(scope="module")
def helm() -> str:
    return built_by(BUILD, "Helm")


def template(helm: str, *args: str, release: str = "otelproc") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, "template", release, str(CHART), "--namespace", NAMESPACE, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def rendered(helm: str, *args: str, release: str = "otelproc") -> dict[str, Any]:
    """The chart's one document, a DaemonSet, as `helm template` renders it with these values."""
    result = template(helm, *args, release=release)
    assert result.returncode == 0, result.stderr
    (daemonset,) = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert daemonset["kind"] == "DaemonSet"
    return daemonset


def container(daemonset: dict[str, Any]) -> dict[str, Any]:
    (otelproc,) = daemonset["spec"]["template"]["spec"]["containers"]
    return otelproc


def env(daemonset: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(daemonset)["env"]}


def setting(name: str, daemonset: dict[str, Any]) -> str:
    """What `otelproc run` in the rendered container resolves the setting to (its env, else the default)."""
    (option,) = [o for o in options_for("run") if o.name == name]
    return env(daemonset).get(option.env, option.default)


def test_helm_lint_passes(helm):
    result = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout, result.stdout


def test_the_rendered_chart_decodes_strictly_with_the_kubernetes_types(helm, validator, tmp_path):
    for args in ([], ["--set", "match=uvicorn*", "--set", "seccompProfile.type=RuntimeDefault"]):
        result = template(helm, *args)
        assert result.returncode == 0, result.stderr
        manifest = tmp_path / "rendered.yaml"
        manifest.write_text(result.stdout)
        checked = validate(validator, manifest)
        assert checked.returncode == 0 and ": ok" in checked.stdout, checked.stdout + checked.stderr


def test_default_values_render_the_daemonset_of_the_plain_manifests(helm):
    chart = rendered(helm)
    plain = find(DAEMONSET, "DaemonSet")
    assert (chart["metadata"]["name"], chart["metadata"]["namespace"]) == ("otelproc", NAMESPACE)
    # Everything but the labels, which are Helm's (app.kubernetes.io/*) where the manifest says app: otelproc.
    selector = chart["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "otelproc", "app.kubernetes.io/instance": "otelproc"}
    assert chart["spec"]["template"]["metadata"]["labels"] == selector
    for spec in (chart["spec"], plain["spec"]):
        del spec["selector"], spec["template"]["metadata"]
    assert chart["spec"] == plain["spec"]


def test_each_value_reaches_the_pod(helm):
    plain = container(rendered(helm))
    daemonset = rendered(
        helm,
        "--set", "endpoint=http://collector.observability:4317",
        "--set", "match=uvicorn*\\,gunicorn*",
        "--set", "scope=cgroup=/sys/fs/cgroup/kubepods",
        "--set", "healthPort=9500",
        "--set", "image.repository=registry.example/otelproc,image.tag=0.1.0",
        "--set", "resources.limits.memory=1Gi",
        "--set", "seccompProfile.type=RuntimeDefault",
        "--set-json", 'tolerations=[{"key":"dedicated","operator":"Equal","value":"web","effect":"NoSchedule"}]',
        "--set-json", 'nodeSelector={"kubernetes.io/os":"linux"}',
        "--set-json", 'extraEnv=[{"name":"OTELPROC_USAGE","value":"cpu,memory,io"}]',
        release="tracing",
    )  # fmt: skip
    otelproc, pod = container(daemonset), daemonset["spec"]["template"]["spec"]
    assert daemonset["metadata"]["name"] == "tracing-otelproc"
    assert env(daemonset)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector.observability:4317"
    assert setting("match", daemonset) == "uvicorn*,gunicorn*"
    assert setting("scope", daemonset) == "cgroup=/sys/fs/cgroup/kubepods"
    assert setting("health_port", daemonset) == "9500"
    assert setting("usage", daemonset) == "cpu,memory,io"
    assert otelproc["ports"] == [{"name": "health", "containerPort": 9500}]
    assert otelproc["image"] == "registry.example/otelproc:0.1.0"
    assert otelproc["resources"]["limits"] == {"cpu": "2", "memory": "1Gi"}
    assert otelproc["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    # What a value does not name stays as it was: four capabilities, read-only root, the host's pid namespace.
    unchanged = copy.deepcopy(plain["securityContext"])
    unchanged["seccompProfile"] = {"type": "RuntimeDefault"}
    assert otelproc["securityContext"] == unchanged and pod["hostPID"] is True
    # The default match is otelproc's own: no OTELPROC_MATCH unless a value names one.
    assert "OTELPROC_MATCH" not in env(rendered(helm))


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("scope=everywhere", "scope"),
        ("endpoint=otel-collector:4317", "endpoint"),
        ("seccompProfile.type=Unconfined", "seccompProfile"),
        ("healthPort=70000", "healthPort"),
        ("replicas=2", "replicas"),
    ],
)
def test_a_bad_value_fails_naming_it(helm, value, named):
    result = template(helm, "--set", value)
    assert result.returncode != 0, result.stdout
    assert named in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
