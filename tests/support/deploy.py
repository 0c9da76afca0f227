"""The deployment files read the way Docker, Kubernetes and the Collector read them: docker-compose.yml's
services, a manifest's documents, a Collector config with its ${env:...} references expanded, and where
its OTLP receiver listens; the contrib Collector the compose file and the manifests run; and the strict
manifest decoder of deploy/kubernetes/validate."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from support import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
CONTRIB_MANIFEST = REPO / "deploy" / "images" / "otelcol-contrib.yaml"
# Set by the Jaeger image itself (jaeger's cmd/jaeger/Dockerfile: ENV JAEGER_LISTEN_HOST=0.0.0.0).
JAEGER_IMAGE_ENV = {"JAEGER_LISTEN_HOST": "0.0.0.0"}
_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(text: str, env: dict[str, str]) -> str:
    """The Collector's ${env:NAME:-default}, with `env` as the process environment."""
    return _ENV_REF.sub(lambda m: env.get(m.group(1), m.group(2) or ""), text)


def documents(path: Path) -> list[dict[str, Any]]:
    """The documents of a multi-document YAML file (a Kubernetes manifest)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(path: Path, kind: str, name: str | None = None) -> dict[str, Any]:
    """The one document of `kind` (and `name`) in a manifest."""
    (found,) = [d for d in documents(path) if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return found


def contrib_collector() -> str:
    """The stand-in of otel/opentelemetry-collector-contrib built from CONTRIB_MANIFEST (cached; minutes
    the first time)."""
    build = REPO / "deploy" / "images" / "otelcol-build.sh"
    result = subprocess.run([str(build), str(CONTRIB_MANIFEST)], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def collector_config(path: Path, env: dict[str, str]) -> dict[str, Any]:
    return yaml.safe_load(expand(path.read_text(), env))


def host_port(endpoint: str) -> tuple[str, int]:
    """'http://collector:4317' or 'jaeger:4317' -> (host, port)."""
    parts = urlsplit(endpoint if "://" in endpoint else "//" + endpoint)
    assert parts.hostname and parts.port, f"{endpoint!r} names no host and port"
    return parts.hostname, parts.port


def otlp_receiver(config: dict[str, Any], protocol: str) -> tuple[str, int]:
    """Where a config's otlp receiver listens for `protocol` (grpc or http)."""
    return host_port(config["receivers"]["otlp"]["protocols"][protocol]["endpoint"])


def compose_service(name: str) -> dict[str, Any]:
    assert name in COMPOSE["services"], f"docker-compose.yml has no service {name!r}"
    return COMPOSE["services"][name]


def build_validator(directory: Path) -> Path:
    """deploy/kubernetes/validate built into `directory` (Go's build cache makes a rebuild quick)."""
    binary = directory / "validate"
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=REPO / "deploy" / "kubernetes" / "validate", check=True)
    return binary


def validate(binary: Path, *paths: Path) -> subprocess.CompletedProcess[str]:
    """Strict decoding of the manifests at `paths` with the Kubernetes API's Go types: one line a document."""
    return subprocess.run([str(binary), *map(str, paths)], capture_output=True, text=True, timeout=60)
