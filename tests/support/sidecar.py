"""`otelproc run` as the kernel tests run it: the session's own bpffs (PinRoot) and a sidecar subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from support import PYTHON, REPO

BPFFS_PREFIX = "otelproc-bpffs-"  # + the pid of the test session that mounted it


def sweep_killed_sessions() -> None:
    """A session killed before its teardown (SIGKILL, a timeout) leaves its bpffs mounted and the probes
    pinned there attached: the next session removes them, for a session whose process has ended."""
    from otelproc.kernel import pins

    for mount in Path(tempfile.gettempdir()).glob(BPFFS_PREFIX + "*"):
        pid = mount.name[len(BPFFS_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        if pins.on_bpffs(mount):
            for pin_dir in (d for d in mount.iterdir() if d.is_dir()):
                pins.remove_all(pin_dir)
            subprocess.run(["umount", "-l", str(mount)], check=False)
        os.rmdir(mount)


class PinRoot:
    """A bpffs of the test session's own (a tmp mount), so no test touches /sys/fs/bpf/otelproc.

    Every sidecar pins under a directory of its own here. At the end of the
    session nothing may be left: no pin, no program of a pin still loaded, and
    no /sys/fs/bpf/otelproc that was not there before.
    """

    def __init__(self) -> None:
        from otelproc.kernel import libbpf, pins

        sweep_killed_sessions()
        self.path: Path | None = Path(tempfile.mkdtemp(prefix=f"{BPFFS_PREFIX}{os.getpid()}-"))
        self.prog_ids: set[int] = set()
        self.production_existed = Path(pins.BPFFS_ROOT, "otelproc").exists()
        try:
            libbpf.mount_bpffs(str(self.path))
        except OSError:  # no CAP_SYS_ADMIN (the least-privilege run): the sidecars do not pin
            os.rmdir(self.path)
            self.path = None

    def new_dir(self) -> str:
        """A pin directory for one sidecar (or two that share it); "" (no pinning) without a bpffs."""
        return "" if self.path is None else str(self.path / uuid.uuid4().hex[:12])

    def note(self, pin_dir: str | os.PathLike) -> None:
        """Remembers the programs pinned in pin_dir, to check at the end that they are gone."""
        from otelproc.kernel import pins

        for probe_dir in pins.probes(Path(pin_dir)):
            try:
                self.prog_ids.update(pins.prog_ids(probe_dir))
            except OSError:
                pass

    def remove(self, pin_dir: str | os.PathLike) -> None:
        """What `otelproc detach` does, for a teardown that must not fail half way."""
        from otelproc.kernel import pins

        if pin_dir:
            self.note(pin_dir)
            pins.remove_all(Path(pin_dir))

    def leftovers(self) -> list[str]:
        from otelproc.kernel import libbpf, pins

        found = []
        if self.path is not None:
            for probe_dir in sorted(self.path.glob("*/*")):
                found.append(f"pinned probe left: {probe_dir} ({', '.join(p.name for p in probe_dir.iterdir())})")
                self.remove(probe_dir.parent)
        time.sleep(0.1)  # a link is released after its last reference, through RCU
        found += [
            f"BPF program {i} of a test's pinned probe is still loaded"
            for i in sorted(self.prog_ids)
            if libbpf.prog_exists(i)
        ]
        if not self.production_existed and Path(pins.BPFFS_ROOT, "otelproc").exists():
            found.append(f"a test pinned in {pins.BPFFS_ROOT}/otelproc, the production default")
        return found

    def close(self) -> None:
        if self.path is not None:
            subprocess.run(["umount", "-l", str(self.path)], check=False)
            os.rmdir(self.path)
            self.path = None


class SidecarProcess:
    """`otelproc run` as a real subprocess; its stderr is collected line by line."""

    def __init__(
        self, args: list[str], env: dict[str, str], command: list[str] | None = None, cwd: Path = REPO
    ) -> None:
        self.args = args
        self.env = env
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            command or [PYTHON, "-m", "otelproc", "run", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True).start()
        self.stdout_lines: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self.wait_line("ready;", timeout=30)  # attached, done adopting, /readyz answers 200

    def _read(self, stream) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self.stdout_lines.append(line)

    def wait_line(self, needle: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                if self.proc.poll() is not None and needle not in "".join(self.lines):
                    time.sleep(0.2)  # let the reader thread catch the last lines
                    raise AssertionError(f"otelproc exited {self.proc.returncode}: {self.lines}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {needle!r} from otelproc in {timeout} s: {self.lines}")
                self._cond.wait(min(left, 0.2))

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def summary(side) -> dict[str, int]:
    """The counters of otelproc's last log line: 'stopped; ... dropped: export_failed=3, ...'."""
    line = side.wait_line("stopped;")
    dropped = line.split("dropped: ", 1)[1].split(";")[0]
    return {} if dropped == "none" else {k: int(v) for k, v in (item.split("=") for item in dropped.split(", "))}
