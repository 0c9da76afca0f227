"""Docker Engine for the compose test: the dockerd and compose plugin deploy/images/setup-docker.sh caches,
started here (no systemd) on a socket of its own and stopped by its pid, with what it changed on the host
put back: its iptables rules, its bridges, the ip_forward switch."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from support import REPO
from support.containers import build_stand_ins, run
from support.jaeger import built_by, stop_process

SETUP = REPO / "deploy" / "images" / "setup-docker.sh"
STATE = Path("/run/otelproc-tests/docker")  # socket, pid file, exec root, client config
DATA_ROOT = Path("/var/lib/otelproc-tests/docker")  # images and build cache, kept between runs
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


class DockerEngine:
    """A running dockerd; `env` is what its clients (docker, docker compose) need, README commands unchanged."""

    def __init__(self) -> None:
        directory = Path(built_by(SETUP, "Docker Engine"))  # dockerd, docker-proxy, docker, the compose plugin
        STATE.mkdir(parents=True, exist_ok=True)
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        socket = STATE / "docker.sock"
        self.pidfile = STATE / "docker.pid"
        if self.pidfile.exists():
            pytest.fail(f"{self.pidfile} exists: a dockerd of an earlier test run is up; stop it first", pytrace=False)
        config = STATE / "client"
        (config / "cli-plugins").mkdir(parents=True, exist_ok=True)
        plugin = config / "cli-plugins" / "docker-compose"
        plugin.unlink(missing_ok=True)
        plugin.symlink_to(directory / "cli-plugins" / "docker-compose")
        self.env = dict(
            os.environ,
            PATH=f"{directory / 'bin'}:{os.environ['PATH']}",
            DOCKER_HOST=f"unix://{socket}",
            DOCKER_CONFIG=str(config),
        )
        self.log = STATE / "dockerd.log"
        self.command = [
            str(directory / "bin" / "dockerd"),
            f"--host=unix://{socket}",
            f"--pidfile={self.pidfile}",
            f"--data-root={DATA_ROOT}",
            f"--exec-root={STATE / 'exec'}",
            "--exec-opt=native.cgroupdriver=cgroupfs",  # no systemd here
            f"--userland-proxy-path={directory / 'bin' / 'docker-proxy'}",
        ]
        self.proc: subprocess.Popen | None = None

    def docker(self, *args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["docker", *args], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs
        )

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def start(self) -> None:
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while self.docker("version", timeout=30).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not come up:\n{self.log_tail()}", pytrace=False)
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM, as its service manager does: it stops its containers and its containerd, then exits."""
        if self.proc is not None:
            stop_process(self.proc, timeout=60)

    def load_stand_ins(self) -> None:
        """The stand-in base images (deploy/images/build.sh, in podman's store) copied into this Engine,
        those it holds already (same image id) left alone."""
        build_stand_ins()
        names = run(str(REPO / "deploy" / "images" / "build.sh"), "--list", timeout=60).stdout.split()
        for name in names:
            wanted = run("podman", "image", "inspect", "--format", "{{.Id}}", name, timeout=60).stdout.strip()
            held = self.docker("image", "inspect", "--format", "{{.Id}}", name, timeout=60).stdout.strip()
            if held.removeprefix("sha256:") == wanted:
                continue
            save = subprocess.Popen(["podman", "save", "--format", "docker-archive", name], stdout=subprocess.PIPE)
            loaded = self.docker("load", stdin=save.stdout, timeout=600)
            assert save.wait(60) == 0 and loaded.returncode == 0, f"{name} into Docker: {loaded.stderr}"


def iptables_rules() -> dict[str, str]:
    return {
        tool: subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=True).stdout
        for tool in ("iptables", "ip6tables")
    }


def builtin_chains(rules: str) -> dict[str, list[str]]:
    """Table -> its built-in chains (those with a policy), in iptables-save's output."""
    chains: dict[str, list[str]] = {}
    table = ""
    for line in rules.splitlines():
        if line.startswith("*"):
            table = line[1:]
            chains[table] = []
        elif line.startswith(":") and line.split()[1] != "-":
            chains[table].append(line[1:].split()[0])
    return chains


def restore_iptables(saved: dict[str, str]) -> None:
    """The rules as they were. A table that was not there (with nf_tables, none is until a rule needs it)
    is emptied, and its chains' policies (dockerd's FORWARD DROP) set back to ACCEPT; the rest restored."""
    for tool, rules in saved.items():
        before = builtin_chains(rules)
        for table, chains in builtin_chains(iptables_rules()[tool]).items():
            if table not in before:
                subprocess.run([tool, "-t", table, "-F"], check=True)
                subprocess.run([tool, "-t", table, "-X"], check=True)
                for chain in chains:
                    subprocess.run([tool, "-t", table, "-P", chain, "ACCEPT"], check=True)
        subprocess.run([f"{tool}-restore"], input=rules, text=True, check=True)


@contextlib.contextmanager
def running_engine() -> Iterator[DockerEngine]:
    """dockerd up for the body of a fixture; after, whatever happened: stopped, and the iptables rules,
    network links and ip_forward it found put back."""
    engine = DockerEngine()
    rules, links_before, forward = iptables_rules(), links(), IP_FORWARD.read_text()
    try:
        engine.start()
        yield engine
    finally:
        try:
            engine.stop()
        finally:
            restore_iptables(rules)
            for link in links() - links_before:  # docker0, the compose network's bridge, their veths
                subprocess.run(["ip", "link", "delete", link], capture_output=True)
            IP_FORWARD.write_text(forward)
