"""The Jaeger binary (deploy/jaeger/build.sh) reads the repository's configs: `jaeger validate` takes
collector-config.yaml, deploy/jaeger/all-in-one.yaml and deploy/jaeger/opensearch.yaml, and
collector-config.yaml uses only components both distributions it runs under have (the core Collector
and the Jaeger binary, whose `jaeger components` lists its own).

No root and no kernel: these need the binary ./install.sh --test builds (Go), so they are not unit
tests. How the files fit together: tests/unit/test_deploy_wiring.py and tests/unit/test_fleet_wiring.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from support.deploy import collector_config
from support.jaeger import ALL_IN_ONE, COLLECTOR_CONFIG, OPENSEARCH_CONFIG, jaeger_binary

# Component types of the core distribution, otel/opentelemetry-collector (its manifest,
# distributions/otelcol/manifest.yaml in opentelemetry-collector-releases: the same modules
# from v0.140 to v0.159). otlp_grpc and otlp_http are the newer names of otlp and otlphttp.
CORE_COMPONENTS = {
    "receivers": {"nop", "otlp", "hostmetrics", "jaeger", "kafka", "prometheus", "zipkin"},
    "processors": {"batch", "memory_limiter", "attributes", "resource", "span", "probabilistic_sampler", "filter"},
    "exporters": {
        "debug",
        "nop",
        "otlp",
        "otlp_grpc",
        "otlphttp",
        "otlp_http",
        "file",
        "kafka",
        "prometheus",
        "prometheusremotewrite",
        "zipkin",
    },
    "extensions": {"zpages", "health_check", "pprof"},
    "connectors": {"forward"},
}


def components_used(path: Path) -> dict[str, set[str]]:
    config = collector_config(path, {})
    return {kind: {name.split("/")[0] for name in config.get(kind) or {}} for kind in CORE_COMPONENTS}


def jaeger_components() -> dict[str, set[str]]:
    result = subprocess.run([jaeger_binary(), "components"], capture_output=True, text=True, timeout=60, check=True)
    listed = yaml.safe_load(result.stdout)
    return {kind: {c["name"] for c in listed.get(kind) or []} for kind in CORE_COMPONENTS}


def test_collector_config_uses_only_components_of_both_distributions():
    used, jaeger = components_used(COLLECTOR_CONFIG), jaeger_components()
    for kind, names in used.items():
        assert names <= CORE_COMPONENTS[kind], (
            f"{kind} missing from the core collector: {names - CORE_COMPONENTS[kind]}"
        )
        assert names <= jaeger[kind], f"{kind} missing from the Jaeger binary: {names - jaeger[kind]}"
    config = collector_config(COLLECTOR_CONFIG, {})
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics"}
    for pipeline in pipelines.values():
        assert pipeline["processors"][0] == "memory_limiter" and "batch" in pipeline["processors"]
        assert "debug" in pipeline["exporters"]
    assert "otlp/jaeger" in pipelines["traces"]["exporters"]


@pytest.mark.parametrize("config", [COLLECTOR_CONFIG, ALL_IN_ONE], ids=lambda p: p.name)
def test_jaeger_validates_the_config(config):
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    result = subprocess.run(
        [jaeger_binary(), "validate", "--config", f"file:{config}"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_jaeger_validates_the_opensearch_config():
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    result = subprocess.run(
        [jaeger_binary(), "validate", "--config", f"file:{OPENSEARCH_CONFIG}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
