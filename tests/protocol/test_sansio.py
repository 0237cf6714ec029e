"""The stream protocol package is sans-IO: no asyncio, no nats, no sockets, no clocks.

Two checks: the import statements of its files (and of the modules they import from
the package), and what actually lands in ``sys.modules`` when it is imported alone in
a fresh interpreter. ``natstream/__init__.py`` is bypassed there, because it imports
the drivers, which rightly use asyncio and nats.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import natstream._protocol

PROTOCOL_DIR = Path(natstream._protocol.__file__).parent
PACKAGE_DIR = PROTOCOL_DIR.parent

FORBIDDEN = {
    "asyncio",
    "nats",
    "socket",
    "ssl",
    "selectors",
    "select",
    "threading",
    "concurrent",
    "subprocess",
    "time",
    "trio",
    "anyio",
}
# The only modules outside the protocol package it may import.
ALLOWED_STDLIB = {
    "__future__",
    "collections",
    "dataclasses",
    "enum",
    "itertools",
    "re",
    "struct",
    "typing",
}
# natstream._errors: exception classes, no imports; natstream._ext: which C extensions
# are in use (the machine's C core), importing nothing of natstream and no I/O.
ALLOWED_PACKAGE_MODULES = {"_errors", "_ext"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every import in ``path``; level > 0 for relative ones."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.extend((0, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
    return out


def test_protocol_files_import_only_the_stdlib_basics_and_errors() -> None:
    files = sorted(PROTOCOL_DIR.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "_wire.py", "_requester.py", "_responder.py"}
    for path in files:
        for level, module in _imports(path):
            top = module.split(".")[0]
            if level == 0:
                assert top in ALLOWED_STDLIB, f"{path.name} imports {module}"
            elif level == 1:
                assert (PROTOCOL_DIR / f"{top}.py").exists(), f"{path.name}: .{module}"
            else:
                assert level == 2, f"{path.name} imports {'.' * level}{module}"
                assert module in ALLOWED_PACKAGE_MODULES, f"{path.name} imports ..{module}"


def test_errors_module_imports_nothing() -> None:
    imports = _imports(PACKAGE_DIR / "_errors.py")
    assert all(module == "__future__" for _, module in imports), imports


def test_ext_module_imports_no_io_and_nothing_of_natstream() -> None:
    imports = _imports(PACKAGE_DIR / "_ext.py")
    assert {module for _, module in imports} <= {"__future__", "os", "importlib", "typing"}
    assert all(level == 0 for level, _ in imports), imports


_PROBE = """
import json, sys, types
before = set(sys.modules)
pkg = types.ModuleType("natstream")
pkg.__path__ = [sys.argv[1]]
sys.modules["natstream"] = pkg
import natstream._protocol as p
m = p.RequesterMachine(0.0)
p.ResponderMachine(p.parse_request_headers(m.request_headers(0.0)), 0.0)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_importing_the_protocol_alone_loads_no_io_modules() -> None:
    out = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE, str(PACKAGE_DIR)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded = json.loads(out.stdout)
    assert "natstream._protocol._requester" in loaded
    assert "natstream._pool" not in loaded
    assert "natstream._requester" not in loaded
    bad = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    assert not bad, f"the sans-IO protocol pulled in {bad}"
