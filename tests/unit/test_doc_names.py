"""Every module and file the docs name is in the tree: a module moved or renamed fails here until its docs follow."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "ARCHITECTURE.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SEARCHED = ("otelproc", "tests", "bench", "demo", "deploy", "bpf")
# Files of the user's own service that the docs show as examples, not files of this repository.
USERS_FILES = {"manage.py"}

_PY_FILE = re.compile(r"`([\w./-]+\.py)(?:::[\w.]+)?[`\s:(]")
_DOTTED = re.compile(r"\botelproc(?:\.[a-z_]+)+")
_QUOTED_NAME = re.compile(r"[\"']((?:otelproc)(?:\.[a-z_]+)+)")


def names_in_the_code() -> set[str]:
    """Span attributes, metric and link names: dotted names that are data, as the code writes them."""
    return {name for path in (REPO / "otelproc").rglob("*.py") for name in _QUOTED_NAME.findall(path.read_text())}


def resolves(dotted: str) -> bool:
    """A module, or an attribute of one: otelproc.app.enable, otelproc.kernel.decoder.decode."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return cut > 1 or len(parts) == 1
    return False


def test_every_file_the_docs_name_exists():
    basenames = {p.name for top in SEARCHED for p in (REPO / top).rglob("*.py")}
    missing = []
    for doc in DOCS:
        for name in _PY_FILE.findall(doc.read_text()):
            name = name.removeprefix("./")
            if "/" in name:  # from the top of the repository, or of the package
                exists = (REPO / name).exists() or (REPO / "otelproc" / name).exists()
            else:
                exists = name in basenames or name in USERS_FILES
            if not exists:
                missing.append(f"{doc.relative_to(REPO)}: {name}")
    assert not missing, "files the docs name that are not in the tree:\n" + "\n".join(missing)


def test_every_module_the_docs_name_imports():
    data = names_in_the_code()
    missing = []
    for doc in DOCS:
        for dotted in set(_DOTTED.findall(doc.read_text())):
            if any(dotted == name or dotted.startswith(name + ".") for name in data):
                continue  # an attribute like otelproc.exit.signal_code, which the code writes as f"otelproc.exit.{key}"
            if re.fullmatch(r"otelproc(\.bpf)?\.[cho]|otelproc\.(log|json)", dotted):  # otelproc.bpf.c, otelproc.h, otelproc.json: files
                continue
            if not resolves(dotted):
                missing.append(f"{doc.relative_to(REPO)}: {dotted}")
    assert not missing, "dotted names the docs use that are neither a module nor a documented attribute:\n" + "\n".join(
        sorted(missing))


def test_every_module_has_its_place_in_the_architecture():
    """ARCHITECTURE.md names each module of the package, so a new one arrives with its place in the map."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    package = REPO / "otelproc"
    unnamed = [str(p.relative_to(package)) for p in sorted(package.rglob("*.py"))
               if p.name not in ("__init__.py", "__main__.py") and f"`{p.name}`" not in text
               and f"{p.relative_to(package)}`" not in text]
    assert unnamed == [], "modules ARCHITECTURE.md does not name: " + ", ".join(unnamed)
