"""--scope, enforced in the kernel, with real pid namespaces and a real cgroup v2 directory."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from otelproc.sidecar.cgroups import cgroup2_mount
from support import PYTHON, REPO
from support.subjects import TEST_COMM

# Runs inside the new pid namespace: starts `otelproc events`, says "ready" once it is attached,
# starts one child, waits for the test's go-ahead on stdin, stops otelproc and prints its events.
INSIDE = """
import subprocess, sys
test_python, scope = sys.argv[1], sys.argv[2]
events = subprocess.Popen([sys.argv[3], "-m", "otelproc", "events", "--match", sys.argv[4], "--scope", scope],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
line = events.stderr.readline()
assert "attached" in line, line + events.stderr.read()
print("ready", flush=True)
child = subprocess.run([test_python, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
print("inside", child.stdout.strip(), flush=True)
sys.stdin.readline()
events.terminate()
out, _ = events.communicate(timeout=30)
print("events", out.replace(chr(10), " "), flush=True)
"""


def events_in_new_pidns(test_python: str, scope: str) -> tuple[int, list[dict]]:
    """The pid (as seen inside) of the child started inside, and the events otelproc reported in there."""
    driver = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", PYTHON, "-c", INSIDE, test_python, scope, PYTHON, TEST_COMM],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert driver.stdout.readline().strip() == "ready"
        inside = int(driver.stdout.readline().split()[1])
        subprocess.run([test_python, "-c", "pass"], timeout=30, check=True)  # outside the namespace
        driver.stdin.write("go\n")
        driver.stdin.flush()
        last = driver.stdout.readline()
        driver.wait(60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert last.startswith("events ")
    events = [
        json.loads(chunk) for chunk in last[len("events ") :].replace("} {", "}\n{").splitlines() if chunk.strip()
    ]
    return inside, events


def test_pidns_scope_sees_only_its_namespace(test_python):
    inside, events = events_in_new_pidns(test_python, "pidns")
    argvs = [e["argv"] for e in events if e["kind"] == "exec"]
    assert [test_python, "-c", "import os; print(os.getpid())"] in argvs
    assert [test_python, "-c", "pass"] not in argvs, "a process outside the namespace was reported"
    (exit_inside,) = [e for e in events if e["kind"] == "exit" and e["pid"] == inside]
    assert exit_inside["pid"] == exit_inside["vpid"] == inside  # pids numbered as seen in the namespace


def test_host_scope_sees_both(test_python):
    _inside, events = events_in_new_pidns(test_python, "host")
    argvs = [e["argv"] for e in events if e["kind"] == "exec"]
    assert [test_python, "-c", "import os; print(os.getpid())"] in argvs
    assert [test_python, "-c", "pass"] in argvs


@pytest.fixture
def cgroup_dir(tmp_path):
    """A fresh cgroup v2 directory: under the host's cgroup2 mount, or a cgroup2 mounted for the test."""
    mount = cgroup2_mount()
    mounted_here = None
    if mount is None:
        mounted_here = tmp_path / "cgroup2"
        mounted_here.mkdir()
        subprocess.run(["mount", "-t", "cgroup2", "none", str(mounted_here)], check=True)
        mount = str(mounted_here)
    path = Path(mount) / f"otelproc-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        path.rmdir()
        if mounted_here is not None:
            subprocess.run(["umount", str(mounted_here)], check=True)


def test_cgroup_scope_sees_only_processes_in_it(test_python, cgroup_dir):
    events = subprocess.Popen(
        [PYTHON, "-m", "otelproc", "events", "--match", TEST_COMM, "--scope", f"cgroup={cgroup_dir}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def move_into_cgroup() -> None:
        (cgroup_dir / "cgroup.procs").write_text(str(os.getpid()))

    try:
        line = events.stderr.readline()
        assert "attached" in line, line
        inside = subprocess.run([test_python, "-c", "pass"], preexec_fn=move_into_cgroup, timeout=30)
        outside = subprocess.run([test_python, "-c", "pass", "outside"], timeout=30)
        assert inside.returncode == outside.returncode == 0
    finally:
        events.terminate()
        out, _ = events.communicate(timeout=30)
    lines = [json.loads(line) for line in out.splitlines()]
    argvs = [e["argv"] for e in lines if e["kind"] == "exec"]
    assert [test_python, "-c", "pass"] in argvs
    assert [test_python, "-c", "pass", "outside"] not in argvs
    (exec_inside,) = [e for e in lines if e["kind"] == "exec"]
    assert exec_inside["cgroup"] == cgroup_dir.name


@pytest.mark.parametrize("scope", ["host", "cgroup=/sys/fs/cgroup"])
def test_host_and_cgroup_scope_are_refused_inside_a_pid_namespace(scope):
    """Inside a pid namespace --scope host and cgroup=... are refused: the kernel would number processes as the
    host does, /proc as the namespace does."""
    result = subprocess.run(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            PYTHON,
            "-m",
            "otelproc",
            "run",
            "--scope",
            scope,
            "--duration",
            "1",
            "--exporter",
            "console",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--scope {scope}" in lines[0] and "pidns" in lines[0], lines
