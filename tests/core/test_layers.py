"""The dependency rule, read from the sources: baponi_core <- baponi_http <- baponi_mcp <-
baponi_cli; each package imports only those to its left, an adapter only through the other
adapter's public surface (its package), and nothing imports the operator package."""

from __future__ import annotations

import ast

import pytest

from tests.harness import ROOT

ORDER = ("baponi_core", "baponi_http", "baponi_mcp", "baponi_cli")
ADAPTERS = ("baponi_http", "baponi_mcp")


def imports(package: str) -> set[str]:
    """Every module an import statement of ``package`` names (absolute names only)."""
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    return found


@pytest.mark.parametrize("package", ORDER)
def test_each_package_imports_only_those_to_its_left(package: str) -> None:
    allowed = ORDER[: ORDER.index(package) + 1]
    ours = {name for name in imports(package) if name.split(".")[0] in ORDER}
    assert ours, f"{package} imports nothing of the project: the check would prove nothing"
    assert {name for name in ours if name.split(".")[0] not in allowed} == set()


@pytest.mark.parametrize("package", ORDER)
def test_adapters_are_reached_through_their_public_surface(package: str) -> None:
    reached = {
        name
        for name in imports(package)
        if name.split(".")[0] in ADAPTERS and name.split(".")[0] != package
    }
    assert {name for name in reached if "." in name} == set()


def test_what_others_take_from_an_adapter_it_exports() -> None:
    import baponi_http
    import baponi_mcp

    exported = {"baponi_http": set(baponi_http.__all__), "baponi_mcp": set(baponi_mcp.__all__)}
    taken: dict[str, set[str]] = {name: set() for name in exported}
    for package in ORDER:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.ImportFrom)
                    and node.module in exported
                    and node.module != package
                ):
                    taken[node.module] |= {alias.name for alias in node.names}
    assert taken["baponi_http"] and taken["baponi_mcp"]
    for adapter, names in taken.items():
        assert names <= exported[adapter], adapter
