"""API key authentication."""

from __future__ import annotations

from baponi_core.errors import Unauthorized
from baponi_core.ids import hash_key
from baponi_core.store import Principal, Store

MAX_KEY_LENGTH = 512


class Authenticator:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def authenticate(self, authorization: str | None) -> Principal:
        """Resolve an ``Authorization: Bearer <key>`` header to its principal."""
        scheme, _, secret = (authorization or "").partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise Unauthorized("missing API key: send Authorization: Bearer <key>")
        if len(secret) > MAX_KEY_LENGTH:
            raise Unauthorized("invalid API key")
        principal = await self.store.find_key(hash_key(secret))
        if principal is None:
            raise Unauthorized("invalid API key")
        return principal
