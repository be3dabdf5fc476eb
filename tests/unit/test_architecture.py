"""The layers of ttcp, read from every module's imports (function-level ones too).

The design card's faces stay flat in ttcp/ (syscalls, elf_loader, maps, server)
beside the command's modules; everything else lives in a package: obj/ (pure
object parsing), kernel/ (kernel facts, probes, attaching), rtt/ (the TCP RTT
domain), workloads/ (cgroups and namespaces, resolved for rtt's table) and
api/ (the HTTP API's parts). Generic eBPF code knows nothing of the RTT
domain, the API or the command; obj/ calls no syscall; rtt/ is below the
workloads, the API and the command; the API's parts are below its face. No module takes
part in an import cycle, and every import is absolute.

A new package is one line in LAYOUT (and, if it has a rule, one in RULES).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.paths import REPO
from tests.support.paths import ttcp_modules as modules

# Where each module belongs, by name prefix: every module of ttcp must be in one.
FLAT = ("ttcp.syscalls", "ttcp.elf_loader", "ttcp.maps", "ttcp.server",  # the design card's faces
        "ttcp.cli", "ttcp.agent", "ttcp.output", "ttcp.errors")  # the command, the agent, stdout, errors
GENERIC = ("ttcp.syscalls", "ttcp.elf_loader", "ttcp.maps", "ttcp.errors", "ttcp.obj", "ttcp.kernel")
FACES = ("ttcp.server", "ttcp.agent", "ttcp.cli", "ttcp.output", "ttcp.__main__")
LAYOUT = {
    "generic eBPF": GENERIC,
    "the TCP RTT domain": ("ttcp.rtt",),
    "workloads (cgroups, namespaces)": ("ttcp.workloads",),
    "the API's parts": ("ttcp.api",),
    "faces and the command": FACES,
    "the package": ("ttcp",),
}


@dataclass(frozen=True)
class Rule:
    """Modules under `importers` import nothing under `forbidden` but what `allowed` names."""

    name: str
    importers: tuple[str, ...]
    forbidden: tuple[str, ...]
    why: str
    allowed: tuple[str, ...] = ()


# Rules apart from I/O: bytes in, decisions out (the modules that act on them are the edges).
PURE = ("ttcp.rtt.filters", "ttcp.rtt.events", "ttcp.rtt.histogram", "ttcp.rtt.clock", "ttcp.rtt.table_rules",
        "ttcp.rtt.filters_file", "ttcp.api.series_bound", "ttcp.api.metrics", "ttcp.workloads.containerd")

RULES = (
    Rule("generic", GENERIC, ("ttcp.rtt", "ttcp.workloads", "ttcp.api", *FACES),
         "generic eBPF code knows nothing of ttcp's RTT domain, its API or its command"),
    Rule("obj", ("ttcp.obj",), ("ttcp.syscalls", "ttcp.maps", "ttcp.elf_loader", "ttcp.kernel"),
         "obj/ parses objects and calls no syscall (the kernel's numbers, ttcp.kernel.uapi, are data)",
         allowed=("ttcp.kernel.uapi",)),
    Rule("rtt", ("ttcp.rtt",), ("ttcp.workloads", "ttcp.api", *FACES),
         "the RTT domain is below the workloads, the API and the command (the table takes a resolver)"),
    Rule("workloads", ("ttcp.workloads",), ("ttcp.api", *FACES),
         "the workloads are below the API and the command"),
    Rule("api", ("ttcp.api",), ("ttcp.server", "ttcp.agent", "ttcp.cli", "ttcp.__main__"),
         "the API's parts are below its face (ttcp.server) and the command"),
    Rule("pure", PURE, ("ttcp.syscalls", "ttcp.maps", "ttcp.elf_loader", "ttcp.kernel", "ttcp.rtt.filter_table",
                        "ttcp.rtt.filters_sync", "ttcp.rtt.tracer", "ttcp.rtt.pinning"),
         "the pure rules reach no kernel and no file (their edges do: filter_table, filters_sync, tracer)"),
)


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    """`name` is one of `prefixes` or inside one (ttcp.kernel covers ttcp.kernel.btf)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def _resolved(importer: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative ones resolved, to report them)."""
    if not node.level:
        return node.module or ""
    package = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str) -> Iterator[Import]:
    """Every ttcp module `name` imports, anywhere in its body (`from ttcp.rtt import
    filters` is ttcp.rtt.filters, `from ttcp.obj.btf import Btf` is ttcp.obj.btf)."""
    path = modules()[name]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolved(name, path, node)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if under(target, ("ttcp",)):
                yield Import(name, target, node.lineno)


def graph() -> dict[str, set[str]]:
    return {name: {i.imported for i in imports_of(name) if i.imported in modules()} for name in modules()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, or a module
    importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


# ---- the layout ---------------------------------------------------------------------------------


def test_every_module_has_a_place() -> None:
    known = tuple(p for prefixes in LAYOUT.values() for p in prefixes)
    placeless = [name for name in modules() if name != "ttcp" and not under(name, known)]
    assert not placeless, f"add these to LAYOUT (and RULES if their package has one): {placeless}"


def test_only_the_faces_and_the_command_are_flat() -> None:
    flat = {name for name, path in modules().items() if path.parent == REPO / "ttcp"}
    assert flat - {"ttcp", "ttcp.__main__"} == set(FLAT)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_imports_follow_the_layers(rule: Rule) -> None:
    broken = [f"{i.importer} imports {i.imported} (line {i.line})"
              for name in modules() if under(name, rule.importers)
              for i in imports_of(name) if under(i.imported, rule.forbidden) and not under(i.imported, rule.allowed)]
    assert not broken, f"{rule.why}:\n  " + "\n  ".join(broken)


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert not found, "modules importing each other, directly or around a loop: " + "; ".join(
        " <-> ".join(c) for c in found)


def test_every_import_is_absolute() -> None:
    relative = [f"{p.relative_to(REPO)}:{node.lineno}"
                for d in ("ttcp", "tests", "bench", "vmtest", "scripts") for p in sorted((REPO / d).rglob("*.py"))
                for node in ast.walk(ast.parse(p.read_text(), str(p)))
                if isinstance(node, ast.ImportFrom) and node.level]
    assert not relative, f"use absolute imports (from ttcp.rtt import filters): {relative}"


# ---- the checks themselves can fail --------------------------------------------------------------


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_read_wherever_they_stand() -> None:
    """Function-level imports count (the agent imports the server only once the header is out)."""
    assert "ttcp.server" in {i.imported for i in imports_of("ttcp.agent")}
    assert "ttcp.rtt.filters" in {i.imported for i in imports_of("ttcp.rtt.filter_table")}


def test_the_readme_layout_table_names_every_module() -> None:
    """README's code-layout table: each flat module in the faces' rows, each package's
    modules (a subpackage as `name/`) in the package's own row."""
    text = (REPO / "README.md").read_text()
    rows = text[text.index("| where | what |"):].split("\n\n", 1)[0].splitlines()[2:]
    unnamed = []
    for name, path in modules().items():
        rel = path.relative_to(REPO / "ttcp").parts
        if rel[-1] in ("__init__.py", "__main__.py"):
            continue
        if len(rel) == 1:
            row = next((r for r in rows if f"`ttcp/{rel[0]}`" in r or f"`{rel[0]}`" in r), None)
        else:
            row = next((r for r in rows if r.startswith(f"| `ttcp/{rel[0]}/`")), "")
            row = row if (f"`{rel[1]}`" if len(rel) == 2 else f"`{rel[1]}/`") in row else None
        if row is None:
            unnamed.append(name)
    assert not unnamed, f"README.md's code-layout table does not name {unnamed}"
