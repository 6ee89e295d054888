"""Persistence behind a small interface; SQLite is the embedded default."""

from baponi_core.store.base import ApiKey, Execution, Org, Principal, Profile, Store, Volume

__all__ = ["ApiKey", "Execution", "Org", "Principal", "Profile", "Store", "Volume"]
