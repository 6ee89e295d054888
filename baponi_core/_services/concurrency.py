"""Per-organisation limit on executions running at once."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from baponi_core._errors import RateLimited
from baponi_core._records import Org


class ConcurrencyLimiter:
    """Counts running executions per organisation. Checked and taken in one step, with no
    await in between, so concurrent requests on the event loop can never overshoot."""

    def __init__(self) -> None:
        self._running: Counter[str] = Counter()

    @contextlib.contextmanager
    def slot(self, org: Org) -> Iterator[None]:
        running = self._running[org.id]
        if running >= org.max_concurrency:
            raise RateLimited(
                f"concurrent execution limit reached ({running}/{org.max_concurrency})",
                retry_after=1,
            )
        self._running[org.id] += 1
        try:
            yield
        finally:
            self._running[org.id] -= 1
