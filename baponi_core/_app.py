"""The core, assembled: store, sandbox runtime and services for one server process."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from types import TracebackType

import anyio

from baponi_core._config import Settings
from baponi_core._homelock import lock_home
from baponi_core._net.egress import Egress
from baponi_core._runtimes import Runtimes
from baponi_core._sandbox import SandboxRuntime
from baponi_core._sandbox.pool import Pool
from baponi_core._sandbox.rootfs import STORAGE_UID
from baponi_core._sandboxes.admission import SandboxLimits
from baponi_core._sandboxes.recovery import end_stranded
from baponi_core._sandboxes.service import Sandboxes
from baponi_core._sealing import Keyring
from baponi_core._services.admin import DEFAULT_RUNTIME, Admin
from baponi_core._services.auth import Authenticator
from baponi_core._services.concurrency import ConcurrencyLimiter
from baponi_core._services.connectors import Connectors
from baponi_core._services.executions import Executions
from baponi_core._services.files import Files
from baponi_core._services.retention import Retention
from baponi_core._services.webhooks import Webhooks
from baponi_core._storage.disks import Disks
from baponi_core._storage.places import Storage
from baponi_core._storage.signing import UrlSigner
from baponi_core._storage.space import Space
from baponi_core._store import store_for

log = logging.getLogger(__name__)
SWEEP_EVERY_S = 600  # how soon the files of a deleted volume go


class Core:
    """Open with ``async with Core(settings) as core``; adapters use its services.
    Closing it drains running executions (see :meth:`Executions.drain`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = store_for(settings)
        self.runtimes = Runtimes(settings.runtimes)
        self.admin = Admin(self.store, self.runtimes)
        self.auth = Authenticator(self.store)
        self.connectors = Connectors(self.store, Keyring(settings.connector_keys))
        self.webhooks = Webhooks(
            self.store,
            allow_private=settings.allow_private_webhooks,
            ca_file=settings.webhook_ca_file,
            retry_delays=settings.webhook_retry_delays,
        )
        self.retention = Retention(self.store, settings.retention_sweep_s)
        self._runtime: SandboxRuntime | None = None
        self._executions: Executions | None = None
        self._files: Files | None = None
        self._sandboxes: Sandboxes | None = None
        self._space: Space | None = None
        self._stack = contextlib.AsyncExitStack()

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

    @property
    def sandboxes(self) -> Sandboxes:
        if self._sandboxes is None:
            raise RuntimeError("core is not open")
        return self._sandboxes

    @property
    def files(self) -> Files:
        if self._files is None:
            raise RuntimeError("core is not open")
        return self._files

    async def __aenter__(self) -> Core:
        self.settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(os.close, lock_home(self.settings.home))
            await self.store.open()
            stack.push_async_callback(_shielded, self.store.close)
            await end_stranded(self.store)
            # Stored files have one unprivileged owner when we are root (each sandbox sees
            # them as its own through an id-mapped mount), else they are ours.
            owner = STORAGE_UID if os.geteuid() == 0 else None
            signer = UrlSigner.load(self.settings.signing_keys)
            disks = None if self.settings.sampled_quota else _disks(owner)
            storage = Storage(
                self.settings.storage_url,
                self.settings.storage_options,
                self.settings.home,
                owner,
                signer,
                self.settings.thread_quota_bytes,
                self.settings.volume_size_bytes,
                disks,
            )
            storage.clear_staging()
            if disks is not None:  # closed once the sandboxes are
                stack.push_async_callback(_shielded, disks.close)
            self._runtime = await stack.enter_async_context(
                SandboxRuntime.open(
                    self.settings.runtime,
                    storage.shared,
                    uids=self.settings.sandbox_uids,
                    egress=Egress(allow_private=self.settings.allow_private_egress),
                )
            )
            pool = Pool(self._runtime, self.settings.pool)
            if pool.enabled:  # its sandboxes end before the runtime closes
                stack.push_async_callback(_shielded, pool.close)
            stack.push_async_callback(_shielded, self.webhooks.close)
            quota = self.settings.thread_quota_bytes
            self._space = Space(self.settings.home, *([storage.disk.base] if storage.disk else []))
            self._files = Files(self.store, storage, signer, quota, self._space)
            await anyio.to_thread.run_sync(self.runtimes.sweep)
            await self._warn_missing_runtimes()
            self._executions = Executions(
                self.store,
                self._runtime,
                self.runtimes,
                storage,
                ConcurrencyLimiter(),
                self.webhooks,
                self.connectors,
                quota,
                self._space,
                pool if pool.enabled else None,
            )
            self._sandboxes = Sandboxes(
                self.store,
                self._runtime,
                self.runtimes,
                SandboxLimits(self.settings.sandboxes_per_org, self.settings.sandboxes_per_server),
                self.settings.sandbox_max_lifetime_s,
                self.settings.sandbox_idle_s,
                self.settings.sandbox_paused_time_counts,
            )
            # They end after their housekeeping stops, before the runtime closes.
            stack.push_async_callback(_shielded, self._sandboxes.close)
            tasks = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tasks.cancel_scope.cancel)  # runs first on close: housekeeping stops
            await self._executions.start(tasks)
            await tasks.start(self._sandboxes.run)
            tasks.start_soon(self.webhooks.run)
            if pool.enabled:
                tasks.start_soon(pool.run)
            tasks.start_soon(self._sweep, storage)
            tasks.start_soon(self.retention.run)
            if disks is not None:
                tasks.start_soon(disks.run)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, *exc: type[BaseException] | BaseException | TracebackType | None
    ) -> None:
        try:
            if self._executions is not None:
                await self._executions.drain(self.settings.shutdown_grace_s)
        finally:
            await self._stack.aclose()

    async def _warn_missing_runtimes(self) -> None:
        """Say at start which runtimes profiles name that are not installed: their
        executions will be refused (503) until the operator imports them."""
        named = await self.store.profiles_by_runtime()
        for name in sorted({DEFAULT_RUNTIME, *named}):
            if self.runtimes.find(name) is None:
                users = ", ".join(named.get(name, [])) or "no profile yet"
                log.warning(
                    "runtime %s is not installed in %s (used by: %s); executions on it are "
                    "refused until it is: baponi runtimes import %s SOURCE",
                    name,
                    self.runtimes.directory,
                    users,
                    name,
                )

    async def _sweep(self, storage: Storage) -> None:
        """Free the storage of deleted volumes (``baponi volumes delete`` only forgets them,
        from another process): at start, then every SWEEP_EVERY_S."""
        while True:
            try:
                cleared = await storage.sweep(self.store.volume_ids)
                if cleared:
                    log.info("removed the files of %d deleted volume(s)", cleared)
            except Exception:
                log.exception("could not remove the files of deleted volumes")
            await anyio.sleep(SWEEP_EVERY_S)

    async def problems(self) -> dict[str, str]:
        """What keeps the server from serving, by component; empty when ready."""
        found: dict[str, str] = {}
        try:
            await self.store.ping()
        except Exception as exc:
            found["database"] = type(exc).__name__
        if self._space is not None and self._space.full:
            found["storage"] = "no free space"
        if shutil.which(self.runtime.bwrap_path) is None:
            found["sandbox"] = "bwrap not found"
        return found


async def _shielded(close: Callable[[], Awaitable[None]]) -> None:
    """Close, even when the core is closed from a cancelled task: a cancel would stop the
    close at its first await, leaving the store's thread or a disk's mount behind."""
    with anyio.CancelScope(shield=True):
        await close()


def _disks(owner: int | None) -> Disks | None:
    """Filesystems of their own for thread homes, when this server can make them."""
    why = Disks.unavailable() if owner is not None else "the server is not root"
    if why is None and owner is not None:
        return Disks(owner)
    log.warning(
        "thread quotas are sampled, not enforced by the kernel, and volumes are plain "
        "directories: %s",
        why,
    )
    return None
