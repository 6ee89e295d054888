"""Everything public is in a package's ``__all__``; everything else is private by name
(docs/library.md): every module and subpackage behind the three packages starts with an
underscore, and every name of ``__all__`` is there to import."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

PACKAGES = ["baponi_core", "baponi_http", "baponi_mcp"]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_module_behind_the_package_is_private(name: str) -> None:
    package = importlib.import_module(name)
    public = [m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")]
    assert public == []


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_what_the_package_holds(name: str) -> None:
    package = importlib.import_module(name)
    missing = [n for n in package.__all__ if not hasattr(package, n)]
    assert missing == []
    assert not [n for n in package.__all__ if n.startswith("_")]
