"""API key authentication, with a block on addresses that keep presenting bad keys."""

from __future__ import annotations

import math
import time
from collections import deque

from baponi_core._errors import RateLimited, Unauthorized
from baponi_core._ids import hash_key
from baponi_core._records import Principal
from baponi_core._store import Store

MAX_KEY_LENGTH = 512
FAILURES_ALLOWED = 3  # within FAILURE_WINDOW_S, from one address
FAILURE_WINDOW_S = 60.0
BLOCK_S = 60.0
MAX_TRACKED = 10_000  # addresses remembered at once; bounds memory under a spray


class FailureBlock:
    """Counts failed attempts per client address and blocks an address that fails too often."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}
        self._blocked: dict[str, float] = {}

    def check(self, client: str) -> None:
        until = self._blocked.get(client)
        if until is None:
            return
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked[client]
            return
        raise RateLimited(
            "too many failed authentication attempts from this address; try again later",
            retry_after=math.ceil(left),
        )

    def failed(self, client: str) -> None:
        now = time.monotonic()
        if len(self._failures) >= MAX_TRACKED:
            self._forget(now)
        recent = self._failures.setdefault(client, deque())
        recent.append(now)
        while recent and recent[0] <= now - FAILURE_WINDOW_S:
            recent.popleft()
        if len(recent) >= FAILURES_ALLOWED:
            self._blocked[client] = now + BLOCK_S
            del self._failures[client]

    def _forget(self, now: float) -> None:
        for client, recent in list(self._failures.items()):
            if recent[-1] <= now - FAILURE_WINDOW_S:
                del self._failures[client]
        if len(self._failures) >= MAX_TRACKED:  # all recent: forget the oldest half
            for client in sorted(self._failures, key=lambda c: self._failures[c][-1])[
                : MAX_TRACKED // 2
            ]:
                del self._failures[client]
        for client, until in list(self._blocked.items()):
            if until <= now:
                del self._blocked[client]


class Authenticator:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.block = FailureBlock()

    async def authenticate(self, authorization: str | None, client: str | None = None) -> Principal:
        """Resolve an ``Authorization: Bearer <key>`` header to its principal. ``client`` is
        the caller's address where there is one (HTTP): its wrong keys are counted."""
        if client is not None:
            self.block.check(client)
        scheme, _, secret = (authorization or "").partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise Unauthorized("missing API key: send Authorization: Bearer <key>")
        principal = None
        if len(secret) <= MAX_KEY_LENGTH:
            principal = await self.store.find_key(hash_key(secret))
        if principal is None:
            if client is not None:
                self.block.failed(client)
            raise Unauthorized("invalid API key")
        return principal
