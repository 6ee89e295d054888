"""The Store implementations the contract suite (and every test taking the ``store``
fixture) runs against. A new implementation adds one entry here."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from baponi_core._store import Store
from baponi_core._store.sqlite import SqliteStore


@dataclass(frozen=True)
class Implementation:
    name: str
    # A store (not yet open) on the database kept in this empty directory; called again with
    # the same directory, one on the same data (another connection, or after a restart).
    make: Callable[[Path], Store]
    # What the store raises when a write breaks a uniqueness rule (the Store protocol names
    # none): a second volume of one slug in one organisation.
    duplicate: type[Exception]


IMPLEMENTATIONS = [
    Implementation(
        "sqlite", lambda where: SqliteStore(where / "baponi.db"), sqlite3.IntegrityError
    ),
]
