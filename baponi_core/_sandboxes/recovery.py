"""What a start does with the sandboxes a previous server left: none of their processes
outlived it (a sandbox dies with its server), so their records end, never read Running."""

from __future__ import annotations

import logging
import time

from baponi_core._store import Store

log = logging.getLogger(__name__)

SERVER_STOPPED = "SERVER_STOPPED"  # status.reason, in OpenSandbox's upper-case style
STOPPED_MESSAGE = "the server stopped; the sandbox and its processes ended with it"


async def end_stranded(store: Store) -> int:
    """Mark every sandbox without an end as Terminated for the server stop; how many."""
    stranded = await store.terminate_live_sandboxes(SERVER_STOPPED, STOPPED_MESSAGE, time.time())
    if stranded:
        log.warning("%d long-lived sandbox(es) ended with the previous server", len(stranded))
    return len(stranded)
