"""The roles' import boundaries: the app side runs inside users' services and must never load the
kernel side (ctypes, libbpf) or the sidecar; only otelproc/kernel/ uses ctypes.

Each import runs in a fresh interpreter (this one has loaded half the package already), and what
it loaded is read from its sys.modules.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess

import pytest

from support import PYTHON, REPO

APP = "otelproc.app"
# What the app side must never load: the kernel side and its binding, and the sidecar.
KERNEL_SIDE = ("ctypes", "otelproc.kernel", "otelproc.sidecar")
KERNEL_DIR = REPO / "otelproc" / "kernel"
PACKAGE = REPO / "otelproc"


def entry_points() -> list[str]:
    """The `module:attribute` entry points pyproject.toml declares (what opentelemetry-instrument loads)."""
    text = (REPO / "pyproject.toml").read_text()
    points = []
    for section in re.findall(r"^\[project\.entry-points\.[^\]]+\]\n((?:[^\[\n].*\n)*)", text, re.M):
        points += re.findall(r'^\s*\S+\s*=\s*"([\w.]+:[\w.]+)"', section, re.M)
    return points


def python_path() -> str:
    """This tree first, then what the caller's PYTHONPATH adds (where the SDK is found when not in site-packages)."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def loaded_by(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running code, with this tree's otelproc first."""
    result = subprocess.run(
        [PYTHON, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        cwd=REPO,
        env={"PYTHONPATH": python_path(), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def kernel_side(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m in KERNEL_SIDE or m.startswith(tuple(f"{k}." for k in KERNEL_SIDE)))


def test_the_entry_points_are_the_app_sides():
    assert entry_points() and all(point.startswith(f"{APP}.") for point in entry_points()), entry_points()


@pytest.mark.parametrize(
    "code",
    [
        f"import {APP}",
        f"import {APP}.instrumentor",
        *(f"from {module} import {attribute}" for module, attribute in (p.split(":") for p in entry_points())),
        # At work: a span linked to its process, the resource detector, context for a subprocess.
        f"import subprocess, {APP}\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        f"provider = TracerProvider()\n{APP}.enable(provider)\n"
        "provider.get_tracer('t').start_span('request').end()\n"
        f"{APP}.ProcessResourceDetector().detect()\nsubprocess.run(['true'])",
    ],
)
def test_the_app_side_loads_nothing_of_the_kernel_side_or_the_sidecar(code):
    loaded = kernel_side(loaded_by(code))
    assert loaded == [], f"{code!r} loaded {', '.join(loaded)}"


# The words every role shares (otelproc/*.py), but for the command itself, which wires the roles together.
SHARED = sorted(
    f"otelproc.{path.stem}" for path in PACKAGE.glob("*.py") if path.stem not in ("__init__", "__main__", "cli")
)


@pytest.mark.parametrize("module", SHARED)
def test_the_shared_words_load_no_role_below_them(module):
    """What the app side imports from the top of the package must not bring the kernel side or the sidecar in."""
    loaded = kernel_side(loaded_by(f"import {module}"))
    assert loaded == [], f"{module} loaded {', '.join(loaded)}"


def imported_names(node: ast.AST) -> list[str]:
    """The modules an import statement names (none for any other node)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return []


def ctypes_importers(directory) -> list[str]:
    """Modules under directory whose code imports ctypes (at any depth: a function's own import counts)."""
    found = []
    for path in sorted(directory.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if any(name == "ctypes" or name.startswith("ctypes.") for name in imported_names(node)):
                found.append(str(path.relative_to(REPO)))
                break
    return found


def test_only_the_kernel_side_imports_ctypes():
    assert ctypes_importers(KERNEL_DIR), "the kernel side's binding is found at all"
    outside = [path for path in ctypes_importers(PACKAGE) if not (REPO / path).is_relative_to(KERNEL_DIR)]
    assert outside == []


# Who may import whom, read from the code (every import, at any depth, but those only for type hints):
# the shared words (otelproc/*.py) import no role; each role imports the shared words and itself; the
# sidecar puts the kernel side and OpenTelemetry together, and the command (cli.py) runs the sidecar.
ROLES = ("kernel", "sidecar", "otel", "app")
MAY_IMPORT = {
    "shared": set(),
    "kernel": {"kernel"},
    "otel": {"otel"},
    "app": {"app"},
    "sidecar": {"sidecar", "kernel", "otel"},
    "cli": {"kernel", "sidecar"},
}


def role_of(path) -> str:
    relative = path.relative_to(PACKAGE)
    if len(relative.parts) > 1:
        return relative.parts[0]
    return "cli" if relative.stem in ("cli", "__main__") else "shared"


def imported_roles(path) -> set[str]:
    """The roles whose modules this file imports, outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text(), str(path))
    hints = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    roles = set()
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
        for name in imported_names(node):
            parts = name.split(".")
            if parts[0] == "otelproc" and len(parts) > 1 and parts[1] in ROLES:
                roles.add(parts[1])
    return roles


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_the_roles_its_role_may(path):
    role = role_of(path)
    assert role in MAY_IMPORT, f"{path} is in no role this test knows: add it to MAY_IMPORT"
    forbidden = imported_roles(path) - MAY_IMPORT[role]
    assert forbidden == set(), (
        f"{path.relative_to(REPO)} ({role}) imports otelproc.{', otelproc.'.join(sorted(forbidden))}"
    )
