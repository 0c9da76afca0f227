"""Prometheus for the tests: the binaries deploy/prometheus/build.sh builds, run on loopback with the
shipped deploy/prometheus/prometheus.yml (its target and intervals changed) and rules.yml."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import yaml

from support import REPO
from support.jaeger import built_by, stop_process, wait_for

BUILD_SCRIPT = REPO / "deploy" / "prometheus" / "build.sh"
CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
RULES = REPO / "deploy" / "prometheus" / "rules.yml"


def prometheus_dir() -> Path:
    """Where deploy/prometheus/build.sh keeps prometheus and promtool."""
    return Path(built_by(BUILD_SCRIPT, "Prometheus"))


def config_for(target: str, interval: str) -> dict[str, Any]:
    """The shipped prometheus.yml, scraping `target` and evaluating the shipped rules every `interval`."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = [str(RULES)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    return config


@dataclass(frozen=True)
class Prometheus:
    """A Prometheus's HTTP API, as a person or Jaeger asks it."""

    url: str

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        response.raise_for_status()
        return response.json()["data"]["result"]

    def value(self, promql: str) -> float:
        """The value of a query that gives at most one sample (a sum); 0 when it gives none."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else 0.0

    def alerts(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/alerts", timeout=10)
        response.raise_for_status()
        return response.json()["data"]["alerts"]


def running_prometheus(tmp_path: Path, port: int, config: dict[str, Any], *flags: str) -> Iterator[Prometheus]:
    """Prometheus on 127.0.0.1:port with `config` (config_for: the shipped one) and `flags`; stopped when
    the generator is closed."""
    binary = prometheus_dir() / "prometheus"
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--enable-feature=created-timestamp-zero-ingestion",  # as deploy/local/up.sh runs it
                *flags,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}")
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise AssertionError(f"prometheus exited {proc.returncode}:\n{tail}")
            try:
                return httpx.get(f"{prometheus.url}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, "Prometheus to be ready", 60)
        yield prometheus
    finally:
        stop_process(proc)
