"""The core, assembled: store, sandbox runtime and services for one server process."""

from __future__ import annotations

import logging
import shutil
from types import TracebackType

from baponi_core.config import Settings
from baponi_core.sandbox import SandboxRuntime
from baponi_core.services.admin import Admin
from baponi_core.services.auth import Authenticator
from baponi_core.services.concurrency import ConcurrencyLimiter
from baponi_core.services.executions import Executions
from baponi_core.services.threads import ThreadHomes
from baponi_core.store.sqlite import SqliteStore

log = logging.getLogger(__name__)


class Core:
    """Open with ``async with Core(settings) as core``; adapters use its services."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = SqliteStore(settings.database)
        self.admin = Admin(self.store)
        self.auth = Authenticator(self.store)
        self._runtime: SandboxRuntime | None = None
        self._executions: Executions | None = None

    @property
    def runtime(self) -> SandboxRuntime:
        if self._runtime is None:
            raise RuntimeError("core is not open")
        return self._runtime

    @property
    def executions(self) -> Executions:
        if self._executions is None:
            raise RuntimeError("core is not open")
        return self._executions

    async def __aenter__(self) -> Core:
        self.settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.store.open()
        try:
            self._runtime = SandboxRuntime.start(
                self.settings.runtime, self.settings.threads, uid=self.settings.sandbox_uid
            )
        except BaseException:
            await self.store.close()
            raise
        threads = ThreadHomes(self.settings.threads, owner=self._runtime.uid)
        self._executions = Executions(self.store, self._runtime, threads, ConcurrencyLimiter())
        return self

    async def __aexit__(
        self, *exc: type[BaseException] | BaseException | TracebackType | None
    ) -> None:
        if self._runtime is not None:
            self._runtime.close()
        await self.store.close()

    async def problems(self) -> dict[str, str]:
        """What keeps the server from serving, by component; empty when ready."""
        found: dict[str, str] = {}
        try:
            await self.store.ping()
        except Exception as exc:
            found["database"] = type(exc).__name__
        if not shutil.disk_usage(self.settings.home).free:
            found["storage"] = "no free space"
        if shutil.which(self.runtime.bwrap_path) is None:
            found["sandbox"] = "bwrap not found"
        return found
