"""The fleet's deployment files fit together: Jaeger on OpenSearch in compose
(docker-compose.opensearch.yml over docker-compose.yml) and in deploy/kubernetes/fleet/.

No container runs here (tests/test_opensearch_fleet.py runs the same Jaeger config on a real
cluster): the files are followed the way Docker and Kubernetes would follow them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import yaml

from support import REPO
from support.deploy import JAEGER_IMAGE_ENV, collector_config, compose_service, otlp_receiver
from support.jaeger import OPENSEARCH_CONFIG

OVERRIDE = yaml.safe_load((REPO / "docker-compose.opensearch.yml").read_text())
FLEET = [
    doc
    for f in sorted((REPO / "deploy" / "kubernetes" / "fleet").glob("*.yaml"))
    for doc in yaml.safe_load_all(f.read_text())
    if doc
]


def fleet(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in FLEET if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def storage(env: dict[str, str]) -> dict[str, Any]:
    """The opensearch backend of deploy/jaeger/opensearch.yaml as Jaeger reads it with `env`."""
    config = collector_config(OPENSEARCH_CONFIG, {**JAEGER_IMAGE_ENV, **env})
    backends = config["extensions"]["jaeger_storage"]["backends"]
    (backend,) = backends.values()
    return backend["opensearch"]


def test_compose_jaeger_reads_the_opensearch_config_and_reaches_every_node():
    jaeger = OVERRIDE["services"]["jaeger"]
    assert jaeger["command"] == ["--config=file:/etc/jaeger/opensearch.yaml", "--config=file:/etc/jaeger/monitor.yaml"]
    assert "./deploy/jaeger/opensearch.yaml:/etc/jaeger/opensearch.yaml:ro" in jaeger["volumes"]
    urls = storage(jaeger["environment"])["server_urls"]
    nodes = {name for name in OVERRIDE["services"] if name.startswith("opensearch-")}
    assert {urlsplit(u).hostname for u in urls} == nodes and {urlsplit(u).port for u in urls} == {9200}
    assert set(jaeger["depends_on"]) == nodes
    for name in nodes:
        env = OVERRIDE["services"][name]["environment"]
        assert env["node.name"] == name
        assert set(env["discovery.seed_hosts"].split(",")) == nodes
        assert set(env["cluster.initial_cluster_manager_nodes"].split(",")) == nodes
    # The override changes the storage only: the Collector of docker-compose.yml still sends to it.
    assert compose_service("jaeger")["image"].startswith("jaegertracing/jaeger:")
    assert otlp_receiver(collector_config(OPENSEARCH_CONFIG, JAEGER_IMAGE_ENV), "grpc") == ("0.0.0.0", 4317)


def test_compose_one_node_can_be_lost():
    replicas = int(storage(OVERRIDE["services"]["jaeger"]["environment"])["indices"]["spans"]["replicas"])
    nodes = [name for name in OVERRIDE["services"] if name.startswith("opensearch-")]
    assert replicas == 1 and len(nodes) == 3


def test_kubernetes_jaeger_reaches_every_pod_of_the_statefulset():
    jaeger = fleet("Deployment", "jaeger")
    (container,) = jaeger["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "--config=file:/etc/jaeger/opensearch.yaml"  # then monitor.yaml
    (volume,) = jaeger["spec"]["template"]["spec"]["volumes"]
    assert volume["configMap"]["name"] == "jaeger-opensearch-config"
    env = {e["name"]: e["value"] for e in container["env"]}
    opensearch = fleet("StatefulSet", "opensearch")
    service = fleet("Service", opensearch["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"  # headless: a DNS name per pod
    pods = {f"{opensearch['metadata']['name']}-{i}" for i in range(opensearch["spec"]["replicas"])}
    settings = storage(env)
    hosts = {urlsplit(u).hostname for u in settings["server_urls"]}
    assert hosts == {f"{pod}.{service['metadata']['name']}" for pod in pods}
    assert {urlsplit(u).port for u in settings["server_urls"]} == {9200}
    (os_container,) = opensearch["spec"]["template"]["spec"]["containers"]
    os_env = {e["name"]: e.get("value") for e in os_container["env"]}
    assert set(os_env["cluster.initial_cluster_manager_nodes"].split(",")) == pods
    # One replica, and one node may be down at a time: nothing is lost or hidden when it is.
    assert int(settings["indices"]["spans"]["replicas"]) == 1
    assert fleet("PodDisruptionBudget", "opensearch")["spec"]["maxUnavailable"] == 1
    # Retention: the cleaner reaches the cluster, and the query side looks no further back.
    (cleaner,) = fleet("CronJob", "jaeger-es-index-cleaner")["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"
    ]
    days, url = cleaner["args"]
    assert urlsplit(url).hostname in hosts
    assert settings["max_span_age"] == f"{24 * int(days)}h"


def test_kubernetes_fleet_jaeger_takes_the_place_of_the_in_memory_one():
    """Same Service name and OTLP port as ../jaeger.yaml, so ../collector.yaml sends to it unchanged."""
    in_memory = [d for d in yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "jaeger.yaml").read_text()) if d]
    (old,) = [d for d in in_memory if d["kind"] == "Service"]
    new = fleet("Service", "jaeger")
    assert new["metadata"] == old["metadata"] and new["spec"]["ports"] == old["spec"]["ports"]
    config = collector_config(OPENSEARCH_CONFIG, JAEGER_IMAGE_ENV)
    (container,) = fleet("Deployment", "jaeger")["spec"]["template"]["spec"]["containers"]
    grpc = next(p["containerPort"] for p in container["ports"] if p["name"] == "otlp-grpc")
    assert otlp_receiver(config, "grpc") == ("0.0.0.0", grpc)
