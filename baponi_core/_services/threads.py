"""Thread claims: a thread home is used by one execution at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from baponi_core._errors import Conflict


class ThreadClaims:
    def __init__(self) -> None:
        self._busy: set[tuple[str, str]] = set()

    @contextlib.contextmanager
    def claim(self, org_id: str, thread_id: str) -> Iterator[tuple[str, str]]:
        """Hold the thread for one execution; a second claim at once is a 409."""
        slot = (org_id, thread_id)
        if slot in self._busy:
            raise Conflict(f"thread {thread_id} is busy: another execution is using it")
        self._busy.add(slot)
        try:
            yield slot
        finally:
            self._busy.discard(slot)
