"""The architecture's edges (docs/architecture.md), held by reading the source.

* Only ``natstream._transport`` touches private names of nats-py or asyncio, or
  subclasses a nats-py class: everything else goes through a ``Link``.
* The packages import each other in one direction only (no cycle, counting imports
  made only for type checking), and the requester never imports the pool.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

import nats.aio.client
import nats.aio.msg
import nats.aio.subscription
import nats.aio.transport
import nats.protocol.parser

import natstream

PACKAGE = Path(natstream.__file__).parent
SEAM = "_transport"
NATS_CLASSES = (
    nats.aio.client.Client,
    nats.aio.subscription.Subscription,
    nats.aio.msg.Msg,
    nats.protocol.parser.Parser,
    nats.aio.transport.Transport,
    nats.aio.transport.TcpTransport,
    nats.aio.transport.WebSocketTransport,
)
# Modules only the transport may import: nats-py's internals.
SEAM_ONLY_MODULES = ("nats.protocol", "nats.aio.transport", "asyncio.tasks")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _nats_private_names() -> set[str]:
    names: set[str] = set()
    for cls in NATS_CLASSES:
        names.update(n for n in dir(cls) if _private(n))
    client = nats.aio.client.Client()
    names.update(n for n in vars(client) if _private(n))
    names.update(n for n in vars(nats.aio.subscription.Subscription(client, 1)) if _private(n))
    names.discard("_abc_impl")  # every abstract class has it
    return names


def _modules() -> Iterator[tuple[str, Path, ast.Module]]:
    """(dotted name relative to natstream, path, tree) of every module but the seam's."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        yield ".".join(rel.parts), path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _outside_seam() -> Iterator[tuple[str, Path, ast.Module]]:
    for name, path, tree in _modules():
        if name.split(".")[0] != SEAM:
            yield name, path, tree


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def test_only_the_transport_touches_private_names_of_nats_py() -> None:
    private = _nats_private_names()
    assert {"_pending", "_flush_queue", "_status", "_ps", "_id"} <= private
    found = []
    for _, path, tree in _outside_seam():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private:
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue  # natstream's own attribute of the same name
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.keyword) and node.arg in private:
                found.append(f"{path.name}:{node.lineno}: {node.arg}=")
    assert not found, (
        "private nats-py names used outside natstream._transport (add what you need to "
        "the Link there, or rename natstream's own attribute if it only shares the name): "
        + "; ".join(found)
    )


def test_only_the_transport_touches_asyncio_internals_or_nats_py_modules() -> None:
    found = []
    for _, path, tree in _outside_seam():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                if _root_name(node) == "asyncio":
                    found.append(f"{path.name}:{node.lineno}: asyncio...{node.attr}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(SEAM_ONLY_MODULES):
                        found.append(f"{path.name}:{node.lineno}: import {alias.name}")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.startswith(SEAM_ONLY_MODULES):
                    found.append(f"{path.name}:{node.lineno}: from {node.module}")
                if node.module.split(".")[0] in ("asyncio", "nats"):
                    found += [
                        f"{path.name}:{node.lineno}: from {node.module} import {a.name}"
                        for a in node.names
                        if _private(a.name)
                    ]
    assert not found, "only natstream._transport may do this: " + "; ".join(found)


def test_only_the_transport_subclasses_nats_py_classes() -> None:
    import importlib

    found = []
    for name, path, _ in _outside_seam():
        if name.startswith("_bench") or name == "__main__":
            continue
        module = importlib.import_module(f"natstream.{name}" if name != "__init__" else "natstream")
        for obj in vars(module).values():
            if inspect.isclass(obj) and obj.__module__ == module.__name__:
                if issubclass(obj, NATS_CLASSES):
                    found.append(f"{path.name}: {obj.__name__}")
    assert not found, f"nats-py classes subclassed outside natstream._transport: {found}"


def _package_of(module: str) -> str:
    """The unit the layering speaks of: a subpackage, or a top-level module."""
    return module.split(".")[0]


def _imports(name: str, tree: ast.Module) -> set[str]:
    """natstream modules ``name`` imports (relative and absolute, type checking too)."""
    here = name.split(".")[:-1]  # the package the module is in
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                target = [*base, *(node.module.split(".") if node.module else [])]
                if not node.module:  # from . import x
                    out.update(".".join([*base, a.name]) for a in node.names)
                    continue
                out.add(".".join(target))
            elif node.module and node.module.startswith("natstream."):
                out.add(node.module.removeprefix("natstream."))
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("natstream.")]
            out.update(n.removeprefix("natstream.") for n in names)
    return {m for m in out if m and m != "__init__"}


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, _, tree in _modules():
        if name in ("__init__", "__main__"):
            continue
        src = _package_of(name)
        for target in _imports(name, tree):
            dst = _package_of(target)
            if dst != src:
                graph.setdefault(src, set()).add(dst)
        graph.setdefault(src, set())
    return graph


def test_the_requester_never_imports_the_pool() -> None:
    graph = _package_graph()
    assert "_transport" in graph["_requester"]
    assert "_pool" not in graph["_requester"]
    assert "_requester" in graph["_pool"]


def test_the_layers_import_downwards_only() -> None:
    graph = _package_graph()
    below = {
        "_protocol": set(),
        "_transport": {"_protocol"},
        "_requester": {"_protocol", "_transport"},
    }
    for pkg, allowed_natstream_layers in below.items():
        layers = set(below) | {"_pool", "_subscriber", "_responder", "_cli", "_writers"}
        assert graph[pkg] & layers <= allowed_natstream_layers, (pkg, graph[pkg])
    for writers in [p for p in graph if p.startswith("_writers")]:
        assert not graph[writers] & {"_transport", "_protocol", "_requester", "_pool"}


def test_no_import_cycle_between_packages() -> None:
    graph = _package_graph()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        assert node not in visiting, " -> ".join([*visiting[visiting.index(node) :], node])
        visiting.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
