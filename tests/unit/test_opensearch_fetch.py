"""deploy/opensearch/fetch.sh: fetched once with Maven, unpacked where another user can read it,
and one line saying what to do when something is missing.

Maven, Java and `id` are small scripts on PATH: the fake mvn records how it was called and puts
a tiny distribution where the real one puts the zip (~/.m2); the fake id answers as a user other
than root, so no user is created; the cache is a directory of the test's own.
"""

from __future__ import annotations

import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from support import REPO

FETCH = REPO / "deploy" / "opensearch" / "fetch.sh"
VERSION = "2.19.6"
ZIP = f".m2/repository/org/opensearch/distribution/integ-test-zip/opensearch/{VERSION}/opensearch-{VERSION}.zip"
FAKE_MVN = """#!/bin/bash
echo "$*" >> "{log}"
mkdir -p "$(dirname "{zip}")"
cp "{source}" "{zip}"
"""


@pytest.fixture
def place(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    source = tmp_path / "opensearch.zip"
    with zipfile.ZipFile(source, "w") as z:
        info = zipfile.ZipInfo(f"opensearch-{VERSION}/bin/opensearch")
        info.external_attr = 0o700 << 16  # as a zip can carry it: readable by its owner only
        z.writestr(info, "#!/bin/sh\n")
    scripts = {
        "mvn": FAKE_MVN.format(log=tmp_path / "mvn.log", zip=tmp_path / "home" / ZIP, source=source),
        "java": "#!/bin/sh\n",
        "id": '#!/bin/sh\n[ "$1" = -u ] && echo 1000\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "home").mkdir()
    return tmp_path


def run(place: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {
        "PATH": path or f"{place / 'bin'}:/usr/bin:/bin",
        "HOME": str(place / "home"),
        "OTELPROC_OPENSEARCH_CACHE": str(place / "cache"),
    }
    return subprocess.run([str(FETCH), *args], env=env, capture_output=True, text=True, timeout=60)


def test_fetched_once_and_unpacked_for_another_user_to_read(place):
    first = run(place)
    assert first.returncode == 0, first.stderr
    home = Path(first.stdout.strip())
    assert home == place / "cache" / f"opensearch-{VERSION}"
    launcher = home / "bin" / "opensearch"
    assert launcher.stat().st_mode & (stat.S_IROTH | stat.S_IXOTH) == stat.S_IROTH | stat.S_IXOTH
    assert (place / "cache").stat().st_mode & 0o777 == 0o755
    calls = (place / "mvn.log").read_text().splitlines()
    artifact = f"org.opensearch.distribution.integ-test-zip:opensearch:{VERSION}:zip"
    assert calls == [f"-q -B dependency:get -Dartifact={artifact}"]

    again = run(place)
    assert (again.returncode, again.stdout) == (0, first.stdout)
    assert len((place / "mvn.log").read_text().splitlines()) == 1, "fetched again"
    assert run(place, "--print-path").stdout == first.stdout


def test_print_path_before_the_fetch_says_what_to_run(place):
    result = run(place, "--print-path")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"deploy/opensearch/fetch.sh: OpenSearch {VERSION} is not fetched: run deploy/opensearch/fetch.sh"
    ]


def test_without_java_it_says_what_to_install(place):
    (place / "bin" / "java").unlink()
    bare = place / "bare"
    bare.mkdir()
    for tool in ("bash", "dirname", "mkdir"):  # everything but java
        (bare / tool).symlink_to(
            subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        )
    result = run(place, path=f"{place / 'bin'}:{bare}")
    assert result.returncode == 2
    assert "apt-get install openjdk-17-jre-headless" in result.stderr
    assert not (place / "mvn.log").exists()


def test_unknown_option(place):
    result = run(place, "--nope")
    assert result.returncode == 2 and "unknown option --nope" in result.stderr
