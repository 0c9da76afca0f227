"""The container paths, run for real with podman: the images build from the files as they are, and the
otelproc image attaches with only the capabilities the files grant plus the shipped seccomp profile;
and with Docker Engine, whose default profile is enough.

Base images are the stand-ins of deploy/images/build.sh: no image registry is reachable here.
Nothing skips: without podman or Docker Engine the tests fail, naming ./install.sh --test.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from support import REPO
from support.containers import build_stand_ins, run
from support.docker_engine import running_engine
from support.subjects import MATCH_TEST

CAPABILITIES = "BPF,PERFMON,SYS_PTRACE,DAC_READ_SEARCH"  # docker-compose.yml's cap_add
SECCOMP = REPO / "deploy" / "seccomp" / "otelproc.json"


@pytest.fixture(scope="module")
def otelproc_image() -> str:
    """The image of the Dockerfile as it is, under the name the Kubernetes manifests use."""
    build_stand_ins("debian:bookworm-slim", "python:3.11-slim-bookworm")
    run("podman", "build", "-f", "Dockerfile", "-t", "otelproc:latest", ".", timeout=1800)
    return "localhost/otelproc:latest"


def test_both_images_build_from_the_files_as_they_are(otelproc_image):
    run("podman", "build", "-f", "demo/Dockerfile", "-t", "otelproc-demo:latest", ".", timeout=1800)
    # The runtime image holds what `otelproc run` needs: the console script, the compiled probe, libbpf.
    probe = run(
        "podman",
        "run",
        "--rm",
        "--entrypoint",
        "python3",
        otelproc_image,
        "-c",
        "import ctypes, pathlib, otelproc; ctypes.CDLL('libbpf.so.1');"
        "print((pathlib.Path(otelproc.__file__).parent / 'bpf' / 'otelproc.bpf.o').read_bytes()[:4])",
        timeout=120,
    )
    assert probe.stdout.strip() == repr(b"\x7fELF")
    assert run(
        "podman", "run", "--rm", "--entrypoint", "otelproc", otelproc_image, "--version", timeout=120
    ).stdout.startswith("otelproc ")
    demo = run(
        "podman",
        "run",
        "--rm",
        "localhost/otelproc-demo:latest",
        "python",
        "-c",
        "import otelproc.app, uvicorn, opentelemetry.instrumentation.asgi; print('imports ok')",
        timeout=120,
    )
    assert "imports ok" in demo.stdout


def otelproc_container(image: str, name: str, endpoint: str, state_dir: Path, *security: str) -> subprocess.Popen:
    """`otelproc run` as docker-compose.yml runs it (all capabilities dropped but four, read-only root),
    in the host's pid and network namespaces, exporting to ENDPOINT, tracking only this session's interpreter."""
    options = dict(zip(MATCH_TEST[::2], MATCH_TEST[1::2]))
    return subprocess.Popen(
        [
            "podman",
            "run",
            "--rm",
            "--name",
            name,
            "--pid",
            "host",
            "--network",
            "host",
            "--cap-drop",
            "ALL",
            "--cap-add",
            CAPABILITIES,
            *security,
            "--read-only",
            "-v",
            f"{state_dir}:/var/lib/otelproc",
            "-e",
            f"OTELPROC_OTLP_ENDPOINT={endpoint}",
            "-e",
            "OTELPROC_PIN_DIR=",
            "-e",
            f"OTELPROC_MATCH={options['--match']}",
            "-e",
            f"OTELPROC_ADOPT={options['--adopt']}",
            image,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_container(name: str, process: subprocess.Popen) -> str:
    subprocess.run(["podman", "stop", "--time", "20", name], capture_output=True, timeout=60)
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        subprocess.run(["podman", "rm", "--force", "--ignore", name], capture_output=True, timeout=60)
    return output


def test_image_exports_a_host_process_span_with_four_capabilities_and_the_seccomp_profile(
    otelproc_image, grpc_receiver, test_python, tmp_path
):
    name = f"otelproc-test-{os.getpid()}"
    container = otelproc_container(
        otelproc_image, name, grpc_receiver.endpoint, tmp_path, "--security-opt", f"seccomp={SECCOMP}"
    )
    try:
        ready = run_until_ready(name)
        assert ready, "otelproc did not say it is ready"
        child = subprocess.Popen([test_python, "-c", "import sys; sys.exit(3)"])
        assert child.wait(30) == 3
        (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid), timeout=30)
    finally:
        output = stop_container(name, container)
    assert "otelproc: attached" in output, output
    assert span.attributes["process.exit.code"] == 3 and span.status == "ERROR"
    assert container.returncode == 0, output


def test_podman_default_seccomp_profile_refuses_what_the_shipped_one_allows(otelproc_image, tmp_path):
    """Why the profile ships (docs/security.md): under podman 4.3's default, CAP_BPF is not enough."""
    name = f"otelproc-test-default-{os.getpid()}"
    container = otelproc_container(otelproc_image, name, "http://127.0.0.1:9", tmp_path)
    output = (
        stop_container(name, container)
        if container.poll() is None and not wait_exit(container)
        else container.communicate()[0]
    )
    assert container.returncode == 1, output
    assert "Operation not permitted" in output, output


def wait_exit(process: subprocess.Popen, timeout: float = 60) -> bool:
    try:
        process.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def run_until_ready(name: str, timeout: float = 60) -> bool:
    """Whether the container's otelproc says 'ready' (it logs to stderr) within TIMEOUT."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True, timeout=30)
        if "otelproc: ready" in logs.stdout + logs.stderr:
            return True
        time.sleep(0.5)
    return False


def test_docker_default_seccomp_profile_lets_the_four_capabilities_load_the_probe():
    """Docker Engine 23 and later (moby#43987) allow bpf() and perf_event_open() to a holder of CAP_BPF and
    CAP_PERFMON under their default profile: on Docker the shipped profile is not needed (docs/security.md).
    podman 4.3's default refuses the same run (the test above)."""
    with running_engine() as docker:
        docker.load_stand_ins()
        built = docker.docker("build", "--quiet", "-f", "Dockerfile", ".", timeout=1800)
        assert built.returncode == 0, built.stderr[-3000:]
        image = built.stdout.strip()
        try:
            caps = [a for cap in CAPABILITIES.split(",") for a in ("--cap-add", cap)]
            check = docker.docker(
                "run", "--rm", "--read-only", "--cap-drop", "ALL", *caps, "--entrypoint", "otelproc", image, "check"
            )
            assert check.returncode == 0, check.stdout + check.stderr
            assert "ok    BPF programs: loaded, attached and detached" in check.stdout, check.stdout
            info = docker.docker("info", "--format", "{{.ServerVersion}} {{.SecurityOptions}}").stdout
            assert "name=seccomp,profile=builtin" in info, info  # the Engine's own default profile was on
        finally:
            docker.docker("image", "rm", image)
