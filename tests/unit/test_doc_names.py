"""Every module and file the docs name is in the tree, and so is every repository path a comment or docstring
of the code names: a module moved or renamed fails here until its docs and the comments that name it follow."""

from __future__ import annotations

import ast
import importlib
import io
import re
import subprocess
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = [
    REPO / "README.md",
    REPO / "ARCHITECTURE.md",
    REPO / "bench" / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
]
SEARCHED = ("otelproc", "tests", "bench", "demo", "deploy", "bpf")
# Files of the user's own service that the docs show as examples, not files of this repository.
USERS_FILES = {"manage.py"}

_PY_FILE = re.compile(r"`([\w./-]+\.py)(?:::[\w.]+)?[`\s:(]")
_DOTTED = re.compile(r"\botelproc(?:\.[a-z_]+)+")
_QUOTED_NAME = re.compile(r"[\"']((?:otelproc)(?:\.[a-z_]+)+)")
# Comments: C's /* */ and //; '#' to the end of the line in shell, Makefiles, Dockerfiles, YAML and TOML
# (at the start of a line or after a space, and not a shebang or ${#...}).
_C_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_HASH_COMMENT = re.compile(r"(?:^|(?<=\s))#(?![!{])[^\n]*", re.M)
# A relative path of two parts or more (not part of an absolute path, a URL, ~/... or an image name's tag).
_PATH = re.compile(r"(?<![\w./~$@:-])((?:[\w.-]+/)+[\w.-]*[\w-])")
_SOURCE_FILE = re.compile(r"\.(py|c|h|sh|md|ya?ml|json|toml)$")


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
            if re.fullmatch(
                r"otelproc(\.bpf)?\.[cho]|otelproc\.(log|json)", dotted
            ):  # otelproc.bpf.c, otelproc.h, otelproc.json: files
                continue
            if not resolves(dotted):
                missing.append(f"{doc.relative_to(REPO)}: {dotted}")
    assert not missing, "dotted names the docs use that are neither a module nor a documented attribute:\n" + "\n".join(
        sorted(missing)
    )


def test_every_module_has_its_place_in_the_architecture():
    """ARCHITECTURE.md names each module of the package, so a new one arrives with its place in the map."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    package = REPO / "otelproc"
    unnamed = [
        str(p.relative_to(package))
        for p in sorted(package.rglob("*.py"))
        if p.name not in ("__init__.py", "__main__.py")
        and f"`{p.name}`" not in text
        and f"{p.relative_to(package)}`" not in text
    ]
    assert unnamed == [], "modules ARCHITECTURE.md does not name: " + ", ".join(unnamed)


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60)
    return [name for name in listed.stdout.decode().split("\0") if name]


def comments(name: str, text: str) -> list[tuple[int, str]]:
    """(line, text) of each comment and docstring of a tracked file: Python, C, and the files that comment with #."""
    path = REPO / name
    if path.suffix == ".py":
        found = [
            (t.start[0], t.string)
            for t in tokenize.generate_tokens(io.StringIO(text).readline)
            if t.type == tokenize.COMMENT
        ]
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node, clean=False)
                if docstring:
                    found.append((node.body[0].lineno, docstring))
        return found
    if path.suffix in (".c", ".h"):
        pattern = _C_COMMENT
    elif path.suffix in (".sh", ".yaml", ".yml", ".toml") or path.name in ("Makefile", "Dockerfile"):
        pattern = _HASH_COMMENT
    elif not path.suffix and re.match(rb"#!.*\b(ba)?sh\b", path.read_bytes()[:100]):
        pattern = _HASH_COMMENT
    else:
        return []
    return [(text.count("\n", 0, m.start()) + 1, m.group()) for m in pattern.finditer(text)]


def ignored(path: str) -> bool:
    """A place git ignores: what a run makes (bench/work), not a file of the repository."""
    return any(
        subprocess.run(["git", "check-ignore", "-q", "--no-index", name], cwd=REPO, timeout=60).returncode == 0
        for name in (path, path + "/")
    )


def test_every_path_a_comment_names_exists():
    """A path from the top of the repository (`otelproc/...`, `tests/...`, `deploy/...`) must exist there; a
    file named from below (`kernel/test_record.py`, here) must exist under the directory of the file that
    names it, or of one above. Paths of other trees (`linux/types.h`, an image's `cmd/jaeger/Dockerfile`)
    start with no directory of this one and are left alone; so do places git ignores (what a run makes)."""
    files = tracked_files()
    top = {name.split("/")[0] for name in files if "/" in name}
    directories = {part for name in files for part in name.split("/")[:-1]}
    stale = []
    for name in files:
        text = (REPO / name).read_text(errors="replace")
        for line, comment in comments(name, text):
            for path in _PATH.findall(comment):
                first = path.split("/")[0]
                if first in top:
                    places = [REPO]
                elif first in directories and _SOURCE_FILE.search(path):
                    here = (REPO / name).parent
                    places = [here, *(p for p in here.parents if p.is_relative_to(REPO))]
                else:
                    continue
                if not any((place / path).exists() for place in places) and not ignored(path):
                    stale.append(f"{name}:{line}: {path}")
    assert not stale, "paths that comments and docstrings name but the tree does not have:\n" + "\n".join(stale)
