"""Persistence behind a small interface (:class:`Store`); SQLite is the embedded default."""

from __future__ import annotations

from baponi_core._config import Settings
from baponi_core._store.base import Store
from baponi_core._store.sqlite import SqliteStore


def store_for(settings: Settings) -> Store:
    """The store the settings name: today always the SQLite file under the home."""
    return SqliteStore(settings.database)


__all__ = ["Store", "store_for"]
