"""The packages depend one way, read from their sources: nothing here imports them.

Two rules (docs/architecture.md §3):

- ``cni/`` is what a runtime's exec costs and what the agent's socket speaks: the
  stdlib-only shim, the CNI protocol and the wire framing. It imports nothing of the
  agent, BGP, IPAM, the datastore or fabricctl, so a shim never drags in pyroute2 or
  aetcd and the agent side can change without touching what runtimes exec.
- The calculation (datastore state in, desired dataplane state out) does no I/O, so it is
  tested as data: none of its modules reaches pyroute2, aetcd, gRPC, libnftables,
  ``subprocess`` or ``socket``, directly or through any first-party module it imports.

Every ``import`` and ``from ... import`` statement counts, in functions and under
``if TYPE_CHECKING`` too: a type-only import still ties the two sides together.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("datastore", "ipam", "cni", "felix_like", "bgp", "fabricctl")

#: What ``cni/`` may not reach: every first-party package but itself.
CNI_MAY_NOT_IMPORT = tuple(p for p in FIRST_PARTY if p != "cni")

#: The calculation modules: pure functions and values from resources to desired state.
CALCULATION = (
    "felix_like.calc",  # desired routes, IPAM inputs
    "felix_like.state",  # the typed cluster state the calculation reads
    "felix_like.policy.ruleset",  # the policy ruleset
    "felix_like.policy.program",  # the ruleset's model
    "felix_like.policy.selection",  # what policies select
    "felix_like.policy.incremental",  # the same, recomputed per change
    "felix_like.policy.interp",  # a ruleset executed on a packet
    "felix_like.policy.explain",  # the semantics stated a second way
    "felix_like.policy.natout",  # what outgoing NAT rewrites
    "felix_like.policy.hostep",  # host endpoint policy
    "bgp.config",  # neighbours and ExaBGP's configuration
    "bgp.export",  # what a node announces
    "bgp.rib",  # the import table
    "bgp.reflect",  # what a route reflector re-announces
    "ipam.planner",  # which blocks to claim and release, from the cache
    "ipam.blockcache",  # the node's blocks, decoded once per revision
)

#: Top-level modules that do I/O: netlink, etcd, gRPC, nftables, processes, sockets.
IO_MODULES = ("pyroute2", "aetcd", "grpc", "nftables", "subprocess", "socket")


def module_file(root: Path, name: str) -> Path | None:
    """The source of first-party module ``name`` under ``root``, or None (not ours)."""
    path = root.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def imports_of(root: Path, name: str) -> set[str]:
    """Every module ``name``'s source imports, as dotted names. ``from a import b`` is
    ``a.b`` when that is a module of ours, else ``a``."""
    source = module_file(root, name)
    assert source is not None, name
    package = name if source.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if module_file(root, sub) else base)
    return found


def reached(root: Path, start: str) -> dict[str, list[str]]:
    """Every module ``start`` imports, directly or through first-party modules, each with
    the shortest chain of imports that reaches it (``[start, ..., module]``)."""
    chains = {start: [start]}
    todo = deque([start])
    while todo:
        name = todo.popleft()
        for dep in sorted(imports_of(root, name)):
            # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            parts = dep.split(".")
            for n in range(1, len(parts) + 1):
                mod = ".".join(parts[:n])
                if mod in chains:
                    continue
                chains[mod] = [*chains[name], mod]
                if parts[0] in FIRST_PARTY and module_file(root, mod):
                    todo.append(mod)
    return chains


def package_modules(root: Path, package: str) -> list[str]:
    names = []
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def violations(root: Path, start: str, forbidden: tuple[str, ...]) -> list[str]:
    return [" -> ".join(chain) for mod, chain in reached(root, start).items()
            if mod.split(".")[0] in forbidden]


@pytest.mark.parametrize("module", package_modules(ROOT, "cni"))
def test_cni_imports_nothing_of_the_agent_bgp_ipam_or_the_datastore(module: str) -> None:
    assert violations(ROOT, module, CNI_MAY_NOT_IMPORT) == []


#: Calculation modules that still reach I/O, with why; each is an xfail(strict=True), so
#: the mark has to go once the module is clean.
PENDING: dict[str, str] = {}


@pytest.mark.parametrize("module", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=PENDING[name]))
    if name in PENDING else name
    for name in CALCULATION
])
def test_the_calculation_does_no_io_directly_or_through_its_imports(module: str) -> None:
    assert module_file(ROOT, module) is not None, f"{module} is gone: update CALCULATION"
    assert violations(ROOT, module, IO_MODULES) == []


def test_the_walker_sees_io_through_first_party_imports() -> None:
    """Not vacuous: the agent reaches netlink and etcd only through our own modules."""
    assert violations(ROOT, "felix_like.agent", ("pyroute2",))
    assert violations(ROOT, "felix_like.agent", ("aetcd",))


def test_an_agent_import_added_to_the_shim_breaks_the_rule(tmp_path: Path) -> None:
    for package in ("cni", "felix_like"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "felix_like" / "netlink.py").write_text("import pyroute2\n")
    (tmp_path / "cni" / "protocol.py").write_text("import json\n")
    shim = tmp_path / "cni" / "shim.py"
    shim.write_text("import sys\nfrom . import protocol\n")
    assert violations(tmp_path, "cni.shim", CNI_MAY_NOT_IMPORT) == []

    shim.write_text("import sys\nfrom . import protocol\n\ndef f() -> None:\n"
                    "    from felix_like.netlink import x\n")
    assert violations(tmp_path, "cni.shim", CNI_MAY_NOT_IMPORT) == [
        "cni.shim -> felix_like", "cni.shim -> felix_like.netlink"]
    assert violations(tmp_path, "cni.shim", ("pyroute2",)) == [
        "cni.shim -> felix_like.netlink -> pyroute2"]
