"""The sandbox runtime of one server: what all its sandboxes are made with, and
:meth:`SandboxRuntime.prepare`, which makes one (see :mod:`handle` for its lifecycle)."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from baponi_core.sandbox import agent, mountns, seccomp
from baponi_core.sandbox.cgroups import Cgroups
from baponi_core.sandbox.handle import Host, Sandbox, SandboxError
from baponi_core.sandbox.libc import call
from baponi_core.sandbox.rootfs import HOST_UID, build_etc
from baponi_core.sandbox.slots import Slots
from baponi_core.sandbox.spawner import Spawner
from baponi_core.sandbox.spec import Shape

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36


class SandboxRuntime:
    """Prepares sandboxes for one server. Open with :meth:`open`; closing it ends every
    sandbox it prepared that is still open."""

    def __init__(self, host: Host) -> None:
        self._host = host

    @property
    def uid(self) -> int | None:
        """The host uid sandboxes run as (None: the server's own)."""
        return self._host.uid

    @property
    def bwrap_path(self) -> str:
        return self._host.bwrap

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        workdir: Path,
        shared: Iterable[Path],
        *,
        uid: int | None = HOST_UID,
        bwrap_path: str | None = None,
    ) -> AsyncIterator[SandboxRuntime]:
        """A runtime; ``workdir`` holds its files when it cannot keep them in a private
        mount namespace (when the server is not root). ``shared`` are the host directories
        whose contents sandboxes may get (thread homes, volumes, caches): every home or
        mount source must lie below one of them. As root, sandboxes run as ``uid``."""
        found = bwrap_path or shutil.which("bwrap")
        if found is None:
            raise SandboxError("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
        init = agent.binary()
        # bwrap exits as soon as the sandbox's init has ended, orphaning it: without this
        # it is reparented to the host's pid 1 and lingers as a zombie (forever when the
        # server itself is pid 1 in a container). Sandbox.close reaps it.
        _set_child_subreaper()
        if os.geteuid() == 0:
            base, cgroups = mountns.private_base(), Cgroups.detect()
        else:  # sandboxes run as ourselves: our own directories are reachable
            base, cgroups, uid = workdir, None, None
        etc = base / "etc"
        etc_binds, slots, spawner = build_etc(etc), Slots.open(base / "slots", init), Spawner(uid)
        try:
            async with anyio.create_task_group() as tasks:
                host = Host(
                    bwrap=found,
                    uid=uid,
                    cgroups=cgroups,
                    spawner=spawner,
                    etc=etc,
                    etc_binds=etc_binds,
                    seccomp=seccomp.program(),
                    slots=slots,
                    shared=tuple(shared),
                    tasks=tasks,
                )
                runtime = cls(host)
                try:
                    yield runtime
                finally:
                    with anyio.CancelScope(shield=True):
                        await runtime._close()
                    tasks.cancel_scope.cancel()
        finally:
            spawner.close()
            if cgroups is not None:
                cgroups.close()

    async def prepare(self, shape: Shape) -> Sandbox:
        """A sandbox of ``shape``, set up and waiting for :meth:`Sandbox.attach`. Raises
        SandboxError when it cannot be set up (then nothing of it is left)."""
        id = f"sbx-{secrets.token_hex(6)}"
        sandbox = Sandbox(self._host, id, shape, self._host.slots.new(id))
        self._host.live.add(sandbox)
        if not self._host.mounts_later:
            return sandbox  # launched at attach, with its mounts
        try:
            await sandbox._launch(None)
        except BaseException:
            await sandbox.close()
            raise
        return sandbox

    async def _close(self) -> None:
        for sandbox in list(self._host.live):
            await sandbox.close()


def _set_child_subreaper() -> None:
    """Adopt orphaned descendants (bwrap's namespace init) so that we can reap them."""
    try:
        call("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0, what="PR_SET_CHILD_SUBREAPER")
    except OSError as exc:
        log.warning("%s", exc)
