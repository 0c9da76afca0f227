"""The Jaeger binary (deploy/jaeger/build.sh) reads the repository's configs: `jaeger validate` takes
collector-config.yaml, deploy/jaeger/all-in-one.yaml and deploy/jaeger/opensearch.yaml, and
collector-config.yaml uses only components both distributions it runs under have (the contrib
Collector's stand-in, deploy/images/otelcol-contrib.yaml, and the Jaeger binary: each lists its own
with `components`).

No root and no kernel: these need the binary ./install.sh --test builds (Go), so they are not unit
tests. How the files fit together: tests/unit/test_deploy_wiring.py and tests/unit/test_fleet_wiring.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from support.deploy import collector_config, contrib_collector
from support.jaeger import ALL_IN_ONE, COLLECTOR_CONFIG, MONITOR, OPENSEARCH_CONFIG, jaeger_binary

KINDS = ("receivers", "processors", "exporters", "extensions", "connectors")


def components_used(path: Path) -> dict[str, set[str]]:
    config = collector_config(path, {})
    return {kind: {name.split("/")[0] for name in config.get(kind) or {}} for kind in KINDS}


def components_of(binary: str) -> dict[str, set[str]]:
    """What a Collector build says it has (`components`: the Jaeger binary, the contrib stand-in)."""
    result = subprocess.run([binary, "components"], capture_output=True, text=True, timeout=60, check=True)
    listed = yaml.safe_load(result.stdout)
    return {kind: {c["name"] for c in listed.get(kind) or []} for kind in KINDS}


def test_collector_config_uses_only_components_of_both_distributions():
    used = components_used(COLLECTOR_CONFIG)
    for distribution, has in (
        ("the Jaeger binary", components_of(jaeger_binary())),
        ("contrib", components_of(contrib_collector())),
    ):
        for kind, names in used.items():
            assert names <= has[kind], f"{kind} missing from {distribution}: {names - has[kind]}"
    config = collector_config(COLLECTOR_CONFIG, {})
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics", "metrics/spanmetrics"}
    for name in ("traces", "metrics"):
        assert pipelines[name]["processors"][0] == "memory_limiter" and "batch" in pipelines[name]["processors"]
        assert "debug" in pipelines[name]["exporters"]
    assert {"otlp/jaeger", "spanmetrics"} <= set(pipelines["traces"]["exporters"])
    # The span metrics (and only they) go to Prometheus: the services' own carry per-process resources.
    assert pipelines["metrics/spanmetrics"] == {"receivers": ["spanmetrics"], "exporters": ["prometheus"]}


@pytest.mark.parametrize(
    "configs",
    [(COLLECTOR_CONFIG,), (ALL_IN_ONE,), (ALL_IN_ONE, MONITOR)],  # monitor.yaml: an overlay of all-in-one.yaml
    ids=lambda configs: "+".join(p.name for p in configs),
)
def test_jaeger_validates_the_config(configs):
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    result = subprocess.run(
        [jaeger_binary(), "validate", *(f"--config=file:{c}" for c in configs)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
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
