"""Baponi inside another program: the core opened on a home as an async context manager.

``async with Embedded(home) as baponi`` opens what ``baponi serve`` opens (the home lock,
the store, storage, the sandbox runtime) and starts what it runs in the background
(webhook deliveries, the sweeps, the event log's purge); leaving the block drains running
executions (within ``Settings.shutdown_grace_s``; at once when the block raised or was
cancelled) and stops and closes all of it, in the reverse order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from baponi_core._app import Core
from baponi_core._config import Settings
from baponi_core._management import Management
from baponi_core._services.admin import DEFAULT_ORG, DEFAULT_PROFILE
from baponi_core._session import Session

Companion = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


class _State(Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Embedded:
    """The core of one home (``home``: a path, default ``$BAPONI_HOME`` or ``~/.baponi``),
    or of explicit ``settings``. One process may open cores on several homes; a home
    already open, here or in another process, is refused with
    :class:`~baponi_core.HomeInUse`."""

    def __init__(self, home: str | Path | None = None, *, settings: Settings | None = None):
        if home is not None and settings is not None:
            raise TypeError("give a home or settings, not both")
        self.settings = settings or Settings.at(home)
        self._core = Core(self.settings)
        self._companions: list[Companion] = []
        self._state = _State.NEW
        self._stack = contextlib.AsyncExitStack()
        self.manage = Management(self._open_core)

    def session(
        self,
        org: str = DEFAULT_ORG,
        profile: str = DEFAULT_PROFILE,
        volumes: Sequence[str] | None = None,
    ) -> Session:
        """Calls as ``org`` with its ``profile`` and ``volumes`` (slugs; None: all of the
        organisation's), without an API key: every limit and rule of a key so bound."""
        return Session(self, org, profile, volumes)

    def attach(self, companion: Companion) -> None:
        """Run ``companion()`` while the core is open: entered after it opens, left before
        it drains (how :func:`baponi_mcp.mcp_app` runs its session manager)."""
        if self._state is not _State.NEW:
            raise RuntimeError("attach before the core is opened")
        self._companions.append(companion)

    async def __aenter__(self) -> Embedded:
        if self._state is not _State.NEW:
            raise RuntimeError("a core is opened once; make a new one")
        self._state = _State.CLOSED  # a failed open is not retried either
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._core)
            await self._core.admin.ensure_default_org()  # a fresh home: what session() names
            for companion in self._companions:
                await stack.enter_async_context(companion())
            self._stack = stack.pop_all()
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._state = _State.CLOSED
        try:
            if exc_type is None:  # else nobody is left to wait for a result
                await self._core.executions.drain(self.settings.shutdown_grace_s)
        finally:
            # Shielded: a cancelled block (or a cancel during the grace) still stops what
            # runs; the core's own closing is safe under a cancel.
            with anyio.CancelScope(shield=True):
                await self._core.executions.drain(0)
            await self._stack.aclose()

    def _open_core(self) -> Core:
        if self._state is not _State.OPEN:
            raise RuntimeError("the core is not open: use it inside `async with`")
        return self._core


def internal_core(embedded: Embedded) -> Core:
    """The services behind ``embedded``, for this project's adapters (baponi_http,
    baponi_mcp) only; not part of the public API."""
    return embedded._core
