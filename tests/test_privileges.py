"""Least privilege: otelproc works with exactly the capabilities it names, and says which one is missing.

Runs as the root user with a capability bounding set cut down by capsh, which is
how a container runs it (root uid, a handful of capabilities).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from support import PYTHON, REPO
from support.sidecar import SidecarProcess
from otelproc.kernel import pins
from otelproc.kernel.checks import CAP_NAMES, CAP_SYS_ADMIN, RUN_CAPS

NEEDED = {CAP_NAMES[c].lower() for c in RUN_CAPS}


def bounding_set() -> list[str]:
    out = subprocess.run(["capsh", "--print"], capture_output=True, text=True, check=True).stdout
    line = next(text for text in out.splitlines() if text.startswith("Bounding set ="))
    return line.split("=", 1)[1].split(",")


def only(keep: set[str]) -> list[str]:
    """A capsh prefix that runs a command with only `keep` (and root's uid)."""
    drop = [cap for cap in bounding_set() if cap not in keep]
    return ["capsh", f"--drop={','.join(drop)}", "--", "-c"]


@pytest.mark.parametrize("cap", RUN_CAPS, ids=[CAP_NAMES[c] for c in RUN_CAPS])
def test_one_missing_capability_is_named(cap):
    # CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, so it goes too.
    keep = NEEDED - {CAP_NAMES[cap].lower()} - {CAP_NAMES[CAP_SYS_ADMIN].lower()}
    command = shlex.join([PYTHON, "-m", "otelproc", "run", "--duration", "1", "--exporter", "console", "--pin-dir", ""])
    result = subprocess.run([*only(keep), command], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"missing capability {CAP_NAMES[cap]}" in lines[0], lines


def test_run_with_exactly_the_named_capabilities(grpc_receiver, tmp_path_factory, pin_root):
    """Adopts another user's process (its environ and exe need the /proc capabilities) and traces a new one;
    pins its probe (in the session's bpffs) with no capability more."""
    bindir = tempfile.mkdtemp(prefix="otelproc-caps-")
    try:
        os.chmod(bindir, 0o755)
        program = os.path.join(bindir, "otpnobody")
        shutil.copy("/bin/sleep", program)
        os.chmod(program, 0o755)
        nobody = subprocess.Popen(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "env",
                "OTEL_SERVICE_NAME=nobodysvc",
                program,
                "60",
            ],
        )
        time.sleep(0.5)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELPROC_"))}
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=grpc_receiver.endpoint,
            OTEL_METRICS_EXPORTER="none",
            OTELPROC_STATE_FILE=str(tmp_path_factory.mktemp("state") / "state.json"),
            OTELPROC_PIN_DIR=pin_root.new_dir(),
        )
        args = ["--match", "otpnobody"]
        command = shlex.join([PYTHON, "-m", "otelproc", "run", *args])
        side = SidecarProcess(args, env, command=[*only(NEEDED), command])
        try:
            nobody.kill()
            nobody.wait()
            fresh = subprocess.Popen([program, "0"])
            assert fresh.wait(30) == 0
            (adopted,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(nobody.pid))
            (new,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(fresh.pid))
        finally:
            side.stop()
            pinned = bool(pins.probes(Path(env["OTELPROC_PIN_DIR"])))
            pin_root.remove(env["OTELPROC_PIN_DIR"])
    finally:
        shutil.rmtree(bindir)
    assert pinned or not env["OTELPROC_PIN_DIR"], "the probe was pinned with only the named capabilities"
    assert adopted.service == "nobodysvc", "environ of another user's process was read"
    assert adopted.attributes["process.executable.path"] == program, "exe of another user's process was read"
    assert adopted.attributes["process.owner"] == "nobody"
    assert adopted.attributes["otelproc.start.source"] == "adopted"
    assert adopted.status_message.startswith(f"killed by SIGKILL from pid {os.getpid()} (")
    assert new.attributes["otelproc.start.source"] == "exec" and new.status == "OK"


def test_kernel_tests_pass_with_exactly_the_named_capabilities():
    """The real-kernel tests again, in a pytest that holds only the capabilities otelproc names.

    Left out: the tests that need CAP_SYS_ADMIN for themselves (unshare, ns_last_pid) or that
    run this very test.
    """
    selection = "not namespace and not same_pid and not privileges"
    command = shlex.join(
        [
            PYTHON,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            selection,
            "tests/test_kernel_events.py",
            "tests/test_run_spans.py",
        ]
    )
    result = subprocess.run([*only(NEEDED), command], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
