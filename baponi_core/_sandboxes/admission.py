"""How many long-lived sandboxes may live at once, per organisation and per server: a
create past either is a 429. The count is the store's (sandboxes without an end), taken
and followed by the new record under one lock, so that creates at the same time cannot
all pass a count that none of them has yet added to."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from baponi_core._errors import RateLimited
from baponi_core._store import Store

RETRY_AFTER_S = 5  # a sandbox ends at a delete or an expiry, not within a second


@dataclass(frozen=True)
class SandboxLimits:
    per_org: int = 10
    per_server: int = 50


class Admission:
    def __init__(self, store: Store, limits: SandboxLimits) -> None:
        self.store, self.limits = store, limits
        self._lock = anyio.Lock()

    async def admit(self, org_id: str, record: Callable[[], Awaitable[None]]) -> None:
        """Run ``record`` (which stores the new sandbox) if there is room for one more
        in the organisation and on the server; else raise RateLimited."""
        async with self._lock:
            if await self.store.count_live_sandboxes() >= self.limits.per_server:
                raise RateLimited(
                    f"this server runs its limit of {self.limits.per_server} sandboxes; "
                    "delete one or try again later",
                    RETRY_AFTER_S,
                )
            if await self.store.count_live_sandboxes(org_id) >= self.limits.per_org:
                raise RateLimited(
                    f"the organisation has its limit of {self.limits.per_org} live "
                    "sandboxes; delete one or try again later",
                    RETRY_AFTER_S,
                )
            await record()
