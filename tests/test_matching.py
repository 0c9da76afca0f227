"""What is tracked: every process that runs a Python interpreter, whatever it was exec'd as.

The sidecar runs with its default list, so every Python on this machine is
tracked, other test runs' too: the assertions look only at pids these tests
started. The subjects are started from pytest, a Python that is itself not
tracked: it exec'd before the probe attached and --adopt false leaves it alone,
so no subject inherits tracking and each is tracked only by its own exec
(test_the_launcher_is_not_tracked holds that premise). Adoption and the app-side helper follow the
same rule: the last tests.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from support import PYTHON
from support.subjects import TEST_COMM


@pytest.fixture
def default_sidecar(sidecar, grpc_receiver):
    return sidecar("--adopt", "false", endpoint=grpc_receiver.endpoint)


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def run(argv: list[str], **kwargs) -> tuple[int, int]:
    """Runs a subject to its end; its pid and exit status."""
    proc = subprocess.Popen(argv, **kwargs)
    return proc.pid, proc.wait(30)


def lifetime(receiver, pid: int):
    (span,) = receiver.wait_for(lambda _: receiver.of_pid(pid))
    return span


def assert_no_span(receiver, pids: set[int]) -> None:
    """None of pids has a span, checked after a python started later has its span (the sidecar exports in order)."""
    later, _ = run([PYTHON, "-c", "pass"])
    lifetime(receiver, later)
    tracked = pids & {s.attributes.get("process.pid") for s in receiver.spans}
    assert not tracked, f"spans of processes that must not be tracked: pids {sorted(tracked)}"


def test_the_launcher_is_not_tracked(default_sidecar, grpc_receiver):
    pid, _ = run(["/bin/sh", "-c", "exit 0"])  # a fork of pytest: tracked only if pytest were
    assert_no_span(grpc_receiver, {os.getpid(), pid})


def test_console_script_with_absolute_shebang(default_sidecar, grpc_receiver, tmp_path):
    """pip's console scripts start with #!/path/to/python: the kernel loads python, the comm is the script's name."""
    script = write_script(tmp_path / "otp-celery", f"#!{PYTHON}\nimport sys\nsys.exit(5)\n")
    pid, status = run([str(script), "worker"])
    assert status == 5
    span = lifetime(grpc_receiver, pid)
    assert span.name == "otp-celery"
    assert span.attributes["otelproc.comm"] == "otp-celery"
    assert span.attributes["process.exit.code"] == 5
    assert (span.status, span.status_message) == ("ERROR", "exit status 5")


def test_env_shebang_through_a_venv_style_symlink(default_sidecar, grpc_receiver, tmp_path):
    """#!/usr/bin/env python3: env is loaded first (not python), then the python it finds on PATH."""
    bin_dir = tmp_path / "venv-bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(PYTHON)  # as in a venv: the file the kernel loads is python3.X
    script = write_script(tmp_path / "otp-envtool", "#!/usr/bin/env python3\nprint('hello')\n")
    pid, status = run([str(script)], env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}, stdout=subprocess.DEVNULL)
    assert status == 0
    span = lifetime(grpc_receiver, pid)
    assert span.name == "otp-envtool"
    assert span.attributes["process.command_args"][1] == str(script)
    assert span.status == "OK"


def test_python_dash_m(default_sidecar, grpc_receiver, tmp_path):
    (tmp_path / "otp_module.py").write_text("import sys\nsys.exit(0)\n")
    pid, status = run([PYTHON, "-m", "otp_module"], env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert status == 0
    assert lifetime(grpc_receiver, pid).name == "otp_module"


def test_bash_shim_named_python3_is_not_tracked_but_the_interpreter_it_runs_is(
    default_sidecar, grpc_receiver, tmp_path
):
    """A version manager's shim: a bash script named python3 that runs helpers, then execs the interpreter."""
    shims = tmp_path / "shims"
    shims.mkdir()
    helpers = tmp_path / "helper-pids"
    write_script(
        shims / "python3",
        f"""#!/bin/bash
sh -c 'echo $$ >> {helpers}'
sh -c 'echo $$ >> {helpers}; exit 3'
exec {PYTHON} "$@"
""",
    )
    (tmp_path / "otp_shimmed.py").write_text("print('hi')\n")
    pid, status = run(
        ["python3", str(tmp_path / "otp_shimmed.py")],
        env={**os.environ, "PATH": f"{shims}:/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
    )
    assert status == 0
    span = lifetime(grpc_receiver, pid)  # the shim's pid, from the moment it became python
    assert span.name == "otp_shimmed.py"
    assert span.attributes["process.command_args"] == [PYTHON, str(tmp_path / "otp_shimmed.py")]
    helper_pids = {int(line) for line in helpers.read_text().split()}
    assert len(helper_pids) == 2
    assert_no_span(grpc_receiver, helper_pids)


def test_unmatched_program_is_absent(default_sidecar, grpc_receiver, tmp_path):
    (tmp_path / "python3").symlink_to("/bin/sleep")  # named like python, loads sleep
    pids = {run(["/bin/sleep", "0.05"])[0], run([str(tmp_path / "python3"), "0.05"])[0]}
    assert_no_span(grpc_receiver, pids)


def test_a_running_console_script_is_adopted_by_its_interpreter(sidecar, grpc_receiver, test_python, tmp_path):
    """Adoption reads /proc/<pid>/exe, as the kernel side looks at the loaded file: the comm is the script's."""
    script = write_script(tmp_path / "otp-adoptee", f"#!{test_python}\nimport sys\nsys.stdin.read()\n")
    running = subprocess.Popen([str(script)], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{running.pid}/comm").read_text().strip() != "otp-adoptee" and time.monotonic() < deadline:
            time.sleep(0.05)  # until the exec is done
        sidecar("--match", TEST_COMM, endpoint=grpc_receiver.endpoint)
    finally:
        running.communicate(b"")
    span = lifetime(grpc_receiver, running.pid)
    assert span.attributes["otelproc.start.source"] == "adopted"
    assert span.name == "otp-adoptee"
