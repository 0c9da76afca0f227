"""The deployment files read the way Docker and the Collector read them: docker-compose.yml's services, a
Collector config with its ${env:...} references expanded, and where its OTLP receiver listens."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from support import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
# Set by the Jaeger image itself (jaeger's cmd/jaeger/Dockerfile: ENV JAEGER_LISTEN_HOST=0.0.0.0).
JAEGER_IMAGE_ENV = {"JAEGER_LISTEN_HOST": "0.0.0.0"}
_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(text: str, env: dict[str, str]) -> str:
    """The Collector's ${env:NAME:-default}, with `env` as the process environment."""
    return _ENV_REF.sub(lambda m: env.get(m.group(1), m.group(2) or ""), text)


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
