"""How long executions are kept: each organisation's retention, applied by a sweep that
deletes the records (stdout and stderr with them) and stored events of executions that
ended longer ago. Never a running one, nor one whose webhook is still to be delivered."""

from __future__ import annotations

import logging
import time

import anyio

from baponi_core._store import Store

log = logging.getLogger(__name__)
DAY_S = 86400


class Retention:
    def __init__(self, store: Store, every_s: float) -> None:
        self.store = store
        self.every_s = every_s

    async def sweep(self, now: float | None = None) -> int:
        """Delete what every organisation keeps no longer, as of ``now``; how many."""
        now = time.time() if now is None else now
        deleted = 0
        for org in await self.store.list_orgs():
            if org.retention_days is not None:
                cutoff = now - org.retention_days * DAY_S
                deleted += await self.store.delete_executions(org.id, cutoff)
        return deleted

    async def run(self) -> None:
        """Sweep at start, then every ``every_s``; a failed sweep is retried at the next."""
        while True:
            try:
                deleted = await self.sweep()
                if deleted:
                    log.info("retention: deleted %d execution(s) past their retention", deleted)
            except Exception:
                log.exception("retention sweep failed")
            await anyio.sleep(self.every_s)
