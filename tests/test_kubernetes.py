"""deploy/kubernetes/ before any cluster: strict decoding with the Kubernetes API's Go types (an unknown or
misplaced field fails, naming it), and the Collector's config under the Collector the manifests name.
What the manifests do in a cluster is tests/test_kubernetes_cluster.py's.
"""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from support import REPO
from support.deploy import CONTRIB_MANIFEST, contrib_collector, find, validate

KUBERNETES = REPO / "deploy" / "kubernetes"
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))

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
