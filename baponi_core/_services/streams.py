"""Per-organisation limit on open event streams (streaming executions and reconnects).

Each stream holds memory for as long as its reader lets it: a bounded amount (the journal's
window, a page of stored events, its result), but a client that opens streams and never
reads them could otherwise hold any number. Executions end and free their concurrency slot
whether or not anyone reads; their streams count here until they are read to the end or
closed.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

from baponi_core._errors import RateLimited
from baponi_core._records import Org

T = TypeVar("T")
SPARE_STREAMS = 4  # open streams beyond one per concurrent execution: reconnects
RETRY_S = 5


class OpenStreams:
    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    def claim(self, org: Org) -> contextlib.ExitStack:
        """Count one more open stream of ``org`` (429 past its limit) until the stack closes."""
        limit = org.max_concurrency + SPARE_STREAMS
        if self._open[org.id] >= limit:
            raise RateLimited(
                f"open stream limit reached ({self._open[org.id]}/{limit}); "
                "read or close a stream first",
                retry_after=RETRY_S,
            )
        self._open[org.id] += 1
        stack = contextlib.ExitStack()
        stack.callback(self._release, org.id)
        return stack

    def _release(self, org_id: str) -> None:
        self._open[org_id] -= 1
        if not self._open[org_id]:
            del self._open[org_id]


class Counted(Generic[T]):
    """``lines`` (NDJSON, or the events themselves), the stream counted as open until they
    end, fail, are closed, or are dropped unread (an adapter may never start iterating a
    response whose client left)."""

    def __init__(self, claim: contextlib.ExitStack, lines: AsyncIterator[T]) -> None:
        self._claim = claim
        self._lines = lines

    def __aiter__(self) -> Counted[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await anext(self._lines)
        except BaseException:  # the end, a failure, or the reader gone (cancelled)
            self._claim.close()
            raise

    async def aclose(self) -> None:
        self._claim.close()
        await self._lines.aclose()  # type: ignore[attr-defined]

    def __del__(self) -> None:
        self._claim.close()  # only a counter's callback: safe at any time
