"""process.owner names a process's user as the process itself sees it: from its own /etc/passwd, in a
mount namespace of its own (as in a container), not the host's.

Real `otelproc run` against the real kernel and a real OTLP receiver.
"""

from __future__ import annotations

import subprocess
import time

from support.cli import QUIET
from support.subjects import LONE_COMM, finish

PASSWD = "containerroot:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"


def test_owner_is_the_name_in_the_process_own_passwd(sidecar, grpc_receiver, lone_python, tmp_path):
    """A process in a mount namespace of its own with its own /etc/passwd (as in a container): its owner is
    the name that file gives its uid."""
    passwd = tmp_path / "passwd"
    passwd.write_text(PASSWD)
    side = sidecar("--match", LONE_COMM, "--adopt", "false", endpoint=grpc_receiver.endpoint, env=QUIET)
    inside = subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount --bind {passwd} /etc/passwd && exec {lone_python} -c "import os, sys; print(os.getpid(), flush=True); '
            'sys.stdin.read()"',
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pid = int(inside.stdout.readline())
        time.sleep(0.5)  # its exec record is read while it runs
    finally:
        finish(inside)
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(pid))
    assert span.attributes["process.owner"] == "containerroot" and span.attributes["process.user.id"] == 0
    assert side.stop() == 0
