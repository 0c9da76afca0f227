"""docker-compose.yml run for real, as README step 3 runs it: up --build, the README's requests, the
traces in Jaeger's API, a request whose worker is killed under it, that kill counted in Prometheus and
Jaeger's Monitor tab, the traces again after a restart of Jaeger, then the documented way down, which
leaves nothing behind.

On both engines users run it with:
- Docker Engine 26.1.5 with Docker's compose plugin 2.26.1 (deploy/images/setup-docker.sh), the
  README's `docker compose` commands word for word; dockerd is started here and stopped by its pid
  (tests/support/docker_engine.py);
- podman 4.3 with podman-compose (deploy/images/setup-podman.sh), which runs the file unchanged.
Both on the stand-in base images of deploy/images/build.sh (no image registry is reachable here),
copied from podman's store into Docker's. otelproc pins its probe in the host's /sys/fs/bpf/otelproc,
the production default, so this test mounts bpffs at /sys/fs/bpf as systemd does on most hosts (this
machine mounts none there) and unmounts it after. Nothing skips: without an engine or its compose the
test fails, naming ./install.sh --test.
"""

from __future__ import annotations

import datetime
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from otelproc.kernel import libbpf, pins
from support import REPO
from support.callers import Caller, pid_inside, serving_worker
from support.containers import build_stand_ins, require
from support.docker_engine import running_engine
from support.jaeger import (
    SERVER,
    STATUS_ERROR,
    JaegerSpan,
    find_spans,
    monitor_error_operations,
    path_of,
    process_span,
    request_spans,
    spans_while_up,
    wait_for,
)
from support.prometheus import Prometheus

PROJECT = "otelproc-demo"  # docker-compose.yml's name
HOST_BPFFS = Path(pins.BPFFS_ROOT)
PIN_DIR = HOST_BPFFS / "otelproc"  # the otelproc service's pin directory: the default
DEMO = "http://127.0.0.1:8000"  # the compose file publishes on every address; the test talks to loopback only
JAEGER = "http://127.0.0.1:16686"
PROMETHEUS = Prometheus("http://127.0.0.1:9090")
BPFFS_OWN_FILES = {"maps.debug", "progs.debug"}  # what the kernel's bpffs shows on its own


@dataclass
class Engine:
    """A container engine and its compose: `docker compose` with a DockerEngine's client environment, or
    podman-compose (env None: this process's)."""

    cli: str
    compose_command: list[str]
    env: dict[str, str] | None = None

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """compose ARGS in the repository root; fails the test, with its output, if it does not end in time."""
        try:
            return subprocess.run(
                [*self.compose_command, *args],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            output = "".join(
                o.decode(errors="replace") if isinstance(o, bytes) else o or "" for o in (exc.output, exc.stderr)
            )
            command = " ".join([*self.compose_command, *args])
            pytest.fail(f"{command}: still running after {timeout} s\n{output[-3000:]}", pytrace=False)

    def containers(self, *filters: str) -> list[str]:
        """Full ids of the project's containers (all states), with further label filters."""
        labels = [f"label={label}" for label in (f"com.docker.compose.project={PROJECT}", *filters)]
        listed = subprocess.run(
            [
                self.cli,
                "ps",
                "--all",
                "--no-trunc",
                "--format",
                "{{.ID}}",
                *(a for f in labels for a in ("--filter", f)),
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return listed.stdout.split()

    def container_id(self, service: str) -> str:
        """The full id of the service's container, as the runtime names its cgroup (podman-compose and
        Docker name the containers differently; both label them)."""
        (cid,) = self.containers(f"com.docker.compose.service={service}")
        return cid

    def remove(self, container: str) -> None:
        """A container `down` left, forced out (podman: with the containers that depend on it)."""
        force = ["--force", "--depend", "--time", "5"] if self.cli == "podman" else ["--force"]
        subprocess.run([self.cli, "rm", *force, container], env=self.env, capture_output=True, timeout=120)


def pinned_programs() -> set[int]:
    """Ids of the programs of every probe pinned in PIN_DIR."""
    return {prog for probe in pins.probes(PIN_DIR) for prog in pins.prog_ids(probe)}


def program_loaded(prog_id: int) -> bool:
    return subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True).returncode == 0


@dataclass
class Stack:
    """The compose project, and what it pinned (to check that the way down removes it)."""

    engine: Engine
    programs: set[int] = field(default_factory=set)
    pinned: bool = False

    def note_pins(self) -> None:
        if PIN_DIR.exists():
            self.pinned = True
            self.programs |= pinned_programs()

    def down(self) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
        """The documented way down (docker-compose.yml's comment): detach the pinned probe, then down."""
        self.note_pins()
        detach = self.engine.compose("exec", "-T", "otelproc", "otelproc", "detach", timeout=120)
        return detach, self.engine.compose("down", "-v")


@pytest.fixture(params=["docker", "podman"])
def engine(request) -> Iterator[Engine]:
    """Docker Engine started for the test, its stand-in images loaded; or podman, its images built."""
    if request.param == "docker":
        require("iptables-save")
        with running_engine() as docker:
            docker.load_stand_ins()
            yield Engine("docker", ["docker", "compose"], docker.env)
    else:
        require("podman")
        require("podman-compose")
        build_stand_ins()
        yield Engine("podman", ["podman-compose"])


@pytest.fixture
def stack(engine: Engine) -> Iterator[Stack]:
    """Before: no project up, no probe pinned in PIN_DIR, bpffs at /sys/fs/bpf. After, whatever happened:
    down, the pins it made removed, and bpffs unmounted again if mounted here."""
    assert not engine.containers(), f"{PROJECT} is already up under {engine.cli}: take it down first"
    if PIN_DIR.exists():
        pytest.fail(
            f"{PIN_DIR} exists: an otelproc of this host pins there, and the compose demo's would share "
            "the directory and its detach remove that probe too; detach it first",
            pytrace=False,
        )
    mounted_here = not pins.on_bpffs(PIN_DIR)
    if mounted_here:
        libbpf.mount_bpffs(str(HOST_BPFFS))
    state = Stack(engine)
    try:
        yield state
    finally:
        try:
            if engine.containers():
                state.down()
            for container in engine.containers():  # what down left, its dependents with it
                engine.remove(container)
        finally:
            if PIN_DIR.exists():  # the otelproc container never ran, or its detach failed
                pins.remove_all(PIN_DIR)
            if mounted_here:
                left = {p.name for p in HOST_BPFFS.iterdir()} - BPFFS_OWN_FILES
                assert not left, f"left in {HOST_BPFFS}, so it stays mounted: {sorted(left)}"
                subprocess.run(["umount", str(HOST_BPFFS)], check=True)


def get(path: str) -> httpx.Response:
    return httpx.get(f"{DEMO}{path}", timeout=30)


def answers() -> bool:
    try:
        return get("/").status_code == 200
    except httpx.HTTPError:
        return False


def jaeger_spans(since: datetime.datetime) -> list[JaegerSpan]:
    """The demo's spans in Jaeger's API; none while it does not answer (it restarts)."""
    return spans_while_up(JAEGER, "demo", since)


def test_compose_up_requests_linked_in_jaeger_then_detach_and_down_leave_nothing(stack):
    engine = stack.engine
    since = datetime.datetime.now(datetime.timezone.utc)
    started_at = time.monotonic()
    # The images first, under a generous limit (minutes on a cold cache); then `up --build` as a user
    # types it, its build now cached: a container that cannot start makes podman-compose wait forever.
    built = engine.compose("build", timeout=1800)
    assert built.returncode == 0, (built.stdout + built.stderr)[-3000:]
    up = engine.compose("up", "--build", "-d", timeout=180)
    assert up.returncode == 0, (up.stdout + up.stderr)[-3000:]
    wait_for(answers, "the demo on 127.0.0.1:8000", timeout=120)

    # README step 3 and docs/deployment.md: 20 times /, then /work, /spawn and /fail.
    served: dict[str, list[int]] = {}  # path -> the workers that answered, one per request
    spawned = 0
    for path in ["/"] * 20 + ["/work", "/spawn", "/fail"]:
        response = get(path)
        assert response.status_code == (500 if path == "/fail" else 200), response.text
        served.setdefault(path, []).append(response.json()["worker"])
        spawned = response.json().get("child", spawned)
    requests = sum(len(workers) for workers in served.values()) + 1  # and the first answer awaited above
    workers = {pid for pids in served.values() for pid in pids}

    def all_arrived() -> list[JaegerSpan]:
        spans = find_spans(JAEGER, "demo", since)
        started = {s.attributes.get("process.pid") for s in spans if s.role == "started"}
        lifetimes = {s.attributes.get("process.pid") for s in spans if s.role == "lifetime"}
        return spans if len(request_spans(spans)) >= requests and workers <= started and spawned in lifetimes else []

    spans = wait_for(
        all_arrived,
        f"{requests} request spans, the 'started' spans of workers {sorted(workers)} "
        "and the /spawn child's lifetime span in Jaeger's API",
        timeout=120,
    )
    started = {(s.trace_id, s.span_id): s for s in spans if s.role == "started"}
    requests_seen = request_spans(spans)
    assert len(requests_seen) == requests

    # Each request links to the process span of the worker that served it: the worker's 'started'
    # span, out while the worker runs, which names the demo's container.
    demo_id = engine.container_id("demo")
    for request in requests_seen:
        # One link. Jaeger's Badger store keeps it as a FOLLOWS_FROM reference: that, not otelproc.link, is
        # what its API says of it (test_correlation checks the attribute, in Jaeger's memory store).
        (link,) = [(t, s) for t, s, attrs in request.links if attrs == {"opentracing.ref_type": "follows_from"}]
        assert len(request.links) == 1, request.links
        worker = started[link]
        assert worker.name == "uvicorn worker started"
        assert worker.attributes["process.pid"] == request.resource["process.pid"] in workers
        assert worker.attributes["otelproc.process.key"] == request.attributes["otelproc.process.key"]
        assert worker.attributes["container.id"] == demo_id
    (failed,) = [r for r in requests_seen if path_of(r) == "/fail"]
    assert failed.kind == SERVER and failed.status_code == STATUS_ERROR
    # The child /spawn ran is a process span under that request.
    (spawn_request,) = [r for r in requests_seen if path_of(r) == "/spawn"]
    child = process_span(spans, spawned)  # its lifetime span, or its 'started' span if it ran past the delay
    assert (child.trace_id, child.parent_span_id) == (spawn_request.trace_id, spawn_request.span_id)
    assert child.attributes["container.id"] == demo_id

    # A request in flight when its worker is killed reaches its caller's trace: otelproc, in a container of
    # its own, reads the span region the worker (another user, in the demo's container) left.
    caller = Caller(DEMO, "slow")
    worker = serving_worker(demo_id, 8000)
    worker_pid = pid_inside(worker)  # as otelproc, in the demo's pid namespace, names it
    worker.kill()

    def killed_request() -> list[JaegerSpan]:
        return [s for s in jaeger_spans(since) if s.trace_id == caller.trace_id and s.kind == SERVER]

    (killed,) = wait_for(killed_request, "the /slow request its worker was killed in, in its caller's trace", 60)
    assert killed.parent_span_id == caller.parent_id and path_of(killed) == "/slow"
    assert killed.status_code == STATUS_ERROR and killed.status_message.startswith("killed by SIGKILL"), killed
    assert killed.attributes["otelproc.span.ended_by"] == "process death"
    (worker_span,) = [
        s for s in jaeger_spans(since) if s.role == "started" and s.attributes.get("process.pid") == worker_pid
    ]
    assert [(t, s) for t, s, _ in killed.links] == [(worker_span.trace_id, worker_span.span_id)], "linked to its worker"

    # The killed worker's end is a process metric too: the Collector's spanmetrics connector counts it,
    # Prometheus scrapes it, and Jaeger's Monitor tab (its API) shows the program with its errors.
    def killed_worker_counted() -> bool:
        try:
            return (
                PROMETHEUS.value(
                    'sum(traces_span_metrics_calls_total{service_name="demo",span_name="uvicorn worker",'
                    'otelproc_exit_outcome="signal",error_type="SIGKILL"})'
                )
                >= 1
            )
        except httpx.HTTPError:  # not up yet
            return False

    wait_for(killed_worker_counted, "the killed worker's end in Prometheus", 120)  # 15 s flush, 15 s scrape
    operations, errors = monitor_error_operations(JAEGER, "demo")
    assert "uvicorn worker" in operations, errors

    # Jaeger keeps them in its volume: restarted, it finds the same request and process spans again.
    restarted = engine.compose("restart", "jaeger", timeout=120)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    kept = {(s.trace_id, s.span_id) for s in spans}
    wait_for(
        lambda: kept <= {(s.trace_id, s.span_id) for s in jaeger_spans(since)},
        f"the {len(kept)} spans again in the restarted Jaeger",
        timeout=60,
    )

    stack.note_pins()
    assert stack.pinned and stack.programs, f"otelproc pinned no probe in {PIN_DIR}"

    detach, down = stack.down()
    assert detach.returncode == 0, detach.stdout + detach.stderr
    assert "unpinned the probe in /sys/fs/bpf/otelproc" in detach.stderr + detach.stdout
    assert down.returncode == 0, down.stdout + down.stderr
    assert engine.containers() == []
    assert not PIN_DIR.exists(), f"{PIN_DIR} is left on the host"
    wait_for(
        lambda: not any(program_loaded(p) for p in stack.programs),
        f"otelproc's programs {sorted(stack.programs)} to be unloaded",
        timeout=30,
    )
    print(f"{engine.cli}: compose up to down: {time.monotonic() - started_at:.0f} s")
