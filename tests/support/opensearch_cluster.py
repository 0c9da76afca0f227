"""A three-node OpenSearch cluster on loopback, as plain processes: what Jaeger's `opensearch`
storage stands on in tests/test_opensearch_fleet.py and bench/many_nodes.py.

The distribution is the one deploy/opensearch/fetch.sh caches (it also creates the user).
OpenSearch refuses to run as root, so every node runs as the unprivileged OPENSEARCH_USER,
in a directory of its own that this module creates and removes. Each node is the JVM itself
(bin/opensearch execs java), so a node's pid is the one to SIGKILL.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from support.ports import free_ports

REPO = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO / "deploy" / "opensearch" / "fetch.sh"
OPENSEARCH_USER = "otelproc-test"


class OpenSearchMissing(Exception):
    """No cached distribution, or no user to run it as: says what to run."""


def distribution() -> Path:
    """The unpacked distribution deploy/opensearch/fetch.sh cached."""
    result = subprocess.run([str(FETCH_SCRIPT), "--print-path"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise OpenSearchMissing(
            "no OpenSearch: run deploy/opensearch/fetch.sh (`./install.sh --test` runs it). " + result.stderr.strip()
        )
    try:
        pwd.getpwnam(OPENSEARCH_USER)
    except KeyError:
        raise OpenSearchMissing(
            f"no user {OPENSEARCH_USER} to run OpenSearch as: run deploy/opensearch/fetch.sh as root"
        ) from None
    return Path(result.stdout.strip())


@dataclass
class Node:
    name: str
    http_port: int
    transport_port: int
    directory: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """`size` OpenSearch nodes on loopback ports, every one eligible as cluster manager and data node.

    Small heaps (the machine is small); the disk watermarks are off, so that a nearly full disk of
    the machine running the tests does not stop replicas from being allocated.
    """

    def __init__(self, size: int = 3, heap: str = "256m", name: str = "otelproc-test") -> None:
        self.home = distribution()
        self.heap = heap
        self.cluster_name = name
        user = pwd.getpwnam(OPENSEARCH_USER)
        self.uid, self.gid = user.pw_uid, user.pw_gid
        # Not under pytest's tmp_path: that is root's, mode 0700, and the nodes run as another user.
        self.root = Path(tempfile.mkdtemp(prefix="otelproc-opensearch-"))
        os.chown(self.root, self.uid, self.gid)
        ports = free_ports(2 * size)
        self.nodes = [
            Node(f"node-{i + 1}", ports[2 * i], ports[2 * i + 1], self.root / f"node-{i + 1}") for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def _configure(self, node: Node) -> Path:
        config = node.directory / "config"
        shutil.copytree(self.home / "config", config)
        seeds = ", ".join(f'"127.0.0.1:{n.transport_port}"' for n in self.nodes)
        managers = ", ".join(n.name for n in self.nodes)
        (config / "opensearch.yml").write_text(
            f"cluster.name: {self.cluster_name}\n"
            f"node.name: {node.name}\n"
            "network.host: 127.0.0.1\n"
            f"http.port: {node.http_port}\n"
            f"transport.port: {node.transport_port}\n"
            f"discovery.seed_hosts: [{seeds}]\n"
            f"cluster.initial_cluster_manager_nodes: [{managers}]\n"
            f"path.data: {node.directory / 'data'}\n"
            f"path.logs: {node.directory / 'logs'}\n"
            "cluster.routing.allocation.disk.threshold_enabled: false\n"
        )
        # The launcher runs java in the distribution's directory, where jvm.options names logs/ and
        # data/: this node's own instead.
        options = config / "jvm.options"
        options.write_text(
            options.read_text()
            .replace("logs/", f"{node.directory}/logs/")
            .replace("HeapDumpPath=data", f"HeapDumpPath={node.directory}/data")
        )
        for sub in ("data", "logs", "tmp"):
            (node.directory / sub).mkdir()
        for path in [node.directory, *node.directory.rglob("*")]:
            os.chown(path, self.uid, self.gid)
        return config

    def start_node(self, node: Node) -> None:
        """Starts (or starts again, on its own data) one node; returns at once."""
        config = node.directory / "config"
        if not config.exists():
            node.directory.mkdir()
            config = self._configure(node)
        java = os.path.realpath(shutil.which("java") or "java")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "JAVA_HOME": str(Path(java).parent.parent),
            "OPENSEARCH_PATH_CONF": str(config),
            "OPENSEARCH_TMPDIR": str(node.directory / "tmp"),
            "OPENSEARCH_JAVA_OPTS": f"-Xms{self.heap} -Xmx{self.heap}",
        }
        with (node.directory / "stdout.log").open("ab") as out:
            node.proc = subprocess.Popen(
                [str(self.home / "bin" / "opensearch")],
                cwd=node.directory,
                env=env,
                user=self.uid,
                group=self.gid,
                extra_groups=[],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self) -> None:
        for node in self.nodes:
            self.start_node(node)

    def health(self, **params: str) -> dict | None:
        """_cluster/health from the first live node that answers, or None."""
        for node in self.nodes:
            if not node.alive:
                continue
            try:
                response = httpx.get(f"{node.url}/_cluster/health", params=params, timeout=5)
            except httpx.HTTPError:
                continue
            if response.status_code in (200, 408):
                return response.json()
        return None

    def wait_healthy(self, status: str, nodes: int, timeout: float = 240) -> dict:
        """Waits until the cluster has `nodes` nodes and is at least `status` (green or yellow)."""
        deadline = time.monotonic() + timeout
        wanted = ("green",) if status == "green" else ("green", "yellow")
        while True:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None and node.proc.returncode != -signal.SIGKILL:
                    raise AssertionError(f"OpenSearch {node.name} exited {node.proc.returncode}:\n{self.tail(node)}")
            health = self.health()
            if health and health["number_of_nodes"] == nodes and health["status"] in wanted:
                return health
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"OpenSearch not {status} with {nodes} nodes after {timeout} s: {health}\n"
                    + "\n".join(self.tail(n) for n in self.nodes)
                )
            time.sleep(1)

    def tail(self, node: Node, lines: int = 15) -> str:
        path = node.directory / "logs" / f"{self.cluster_name}.log"
        if not path.exists():
            path = node.directory / "stdout.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {node.name} ({path.name}):\n" + "\n".join(text.splitlines()[-lines:])

    def kill(self, node: Node) -> int:
        """SIGKILL to the node's JVM, by its pid (one this cluster started); returns the pid."""
        assert node.proc is not None and node.alive
        pid = node.proc.pid
        os.kill(pid, signal.SIGKILL)
        node.proc.wait(30)
        return pid

    def stop(self) -> None:
        """SIGTERM to every node still running (SIGKILL after 60 s), then removes their directories."""
        running = [n for n in self.nodes if n.alive]
        for node in running:
            node.proc.send_signal(signal.SIGTERM)
        for node in running:
            try:
                node.proc.wait(60)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)
