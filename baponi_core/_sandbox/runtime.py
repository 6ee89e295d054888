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

from baponi_core._net.egress import Egress
from baponi_core._sandbox import agent, attach, gate, mountns, seccomp
from baponi_core._sandbox.cgroups import Cgroups
from baponi_core._sandbox.handle import Host, Sandbox, SandboxError
from baponi_core._sandbox.image import Hold
from baponi_core._sandbox.libc import call
from baponi_core._sandbox.rootfs import STORAGE_UID, build_etc
from baponi_core._sandbox.roots import Roots
from baponi_core._sandbox.slots import Slots
from baponi_core._sandbox.spec import Shape
from baponi_core._sandbox.uids import DEFAULT_UIDS, UidRange, Uids
from baponi_core._sandbox.workers import Spawner, Worker

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36


class SandboxRuntime:
    """Prepares sandboxes for one server. Open with :meth:`open`; closing it ends every
    sandbox it prepared that is still open."""

    def __init__(self, host: Host) -> None:
        self._host = host

    @property
    def owner(self) -> int | None:
        """The uid that owns the files shared with sandboxes (None: the server's own)."""
        return STORAGE_UID if self._host.root else None

    @property
    def bwrap_path(self) -> str:
        return self._host.bwrap

    @property
    def prepares_ahead(self) -> bool:
        """Whether sandboxes can be set up before their request and checked while they
        wait (root, with cgroups): what a pool needs."""
        return self._host.root and self._host.cgroups is not None

    def close_later(self, sandbox: Sandbox) -> None:
        """Close ``sandbox`` in the background (the runtime's close waits for it)."""
        self._host.tasks.start_soon(sandbox.close, name=f"closing sandbox {sandbox.id}")

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        workdir: Path,
        shared: Iterable[Path],
        *,
        uids: UidRange = DEFAULT_UIDS,
        bwrap_path: str | None = None,
        egress: Egress | None = None,
    ) -> AsyncIterator[SandboxRuntime]:
        """A runtime; ``workdir`` holds its files when it cannot keep them in a private
        mount namespace (when the server is not root). ``shared`` are the host directories
        whose contents sandboxes may get (thread homes, volumes, caches): every home or
        mount source must lie below one of them. As root, each sandbox runs as a uid of
        ``uids`` of its own; otherwise all run as ourselves. ``egress`` is the proxy of
        sandboxes whose network policy lets them out (default: one for public hosts)."""
        found = bwrap_path or shutil.which("bwrap")
        if found is None:
            raise SandboxError("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
        init = agent.binary()
        # bwrap exits as soon as the sandbox's init has ended, orphaning it: without this
        # it is reparented to the host's pid 1 and lingers as a zombie (forever when the
        # server itself is pid 1 in a container). Sandbox.close reaps it.
        _set_child_subreaper()
        root = os.geteuid() == 0
        if root:
            conflicts = uids.host_conflicts()
            if conflicts:
                raise SandboxError(f"the sandbox uids {uids} are in use: {', '.join(conflicts)}")
            base, cgroups = mountns.private_base(), Cgroups.detect()
        else:  # sandboxes run as ourselves: our own directories are reachable
            base, cgroups = workdir, None
        etc = base / "etc"
        etc_binds, slots = build_etc(etc), Slots.open(base / "slots", init)
        spawner = Spawner(switch=root)
        # The janitor unmounts: its thread starts on first use, from this one, so it is in
        # our private mount namespace.
        janitor = Worker("janitor", thread=root)
        pool = Uids(uids) if root else None
        bound: list[Path] = []  # unmounted when the runtime closes
        if root:  # one bind of /etc for bwrap to make, not one per directory
            _bind_host_etc(etc, etc_binds)
            bound, etc_binds = [etc / name for name in etc_binds], []
        shared = tuple(shared)
        roots = Roots(base / "roots") if root else None
        try:
            if pool is not None:
                _check_idmaps(pool, shared)
            async with anyio.create_task_group() as tasks:
                host = Host(
                    bwrap=found,
                    uids=pool,
                    cgroups=cgroups,
                    gate=gate.install(base) if cgroups is not None else None,
                    spawner=spawner,
                    janitor=janitor,
                    etc=etc,
                    etc_binds=etc_binds,
                    roots=roots,
                    seccomp=seccomp.program(),
                    slots=slots,
                    shared=shared,
                    tasks=tasks,
                    egress=egress or Egress(),
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
            janitor.close()
            if pool is not None:
                pool.close()
            if cgroups is not None:
                cgroups.close()
            if roots is not None:  # the image roots still current: no sandbox uses them
                bound += roots.mounted()
            if root:
                mountns.release(base, bound)

    async def prepare(
        self, shape: Shape, *, ahead: bool = True, background: bool = False
    ) -> Sandbox:
        """A sandbox of ``shape``, waiting for :meth:`Sandbox.attach`.

        ``ahead``: set it up now, before its request is known (as root; a server that is
        not root cannot mount into a running sandbox, so its sandboxes are always set up
        at attach). Otherwise it is launched at attach, with the request's mounts bound as
        it is set up: what a caller that has its request already does, one round trip to
        the sandbox shorter. Raises SandboxError when it cannot be set up (then nothing of
        it is left). ``background``: at the least CPU share until
        :meth:`Sandbox.foreground`, so that preparing ahead takes from requests only the
        CPU they leave idle."""
        id = f"sbx-{secrets.token_hex(6)}"
        try:
            hold = Hold(shape.runtime)
        except OSError as exc:
            raise SandboxError(f"runtime {shape.runtime.name} cannot be used: {exc}") from None
        uids, slot = self._host.uids, self._host.slots.new(id)
        try:
            uid = uids.take() if uids is not None else None
        except OSError as exc:
            slot.remove()
            hold.release()
            raise SandboxError(str(exc)) from None
        sandbox = Sandbox(self._host, id, shape, slot, uid, hold, background=background)
        self._host.live.add(sandbox)
        try:
            if ahead and self._host.root:
                # Ahead, off any request's path: the id-mapping its attach may need too.
                await sandbox._map_ids()
                await sandbox._launch(None, ready=True)
        except BaseException:
            with anyio.CancelScope(shield=True):  # a cancelled prepare leaves nothing either
                await sandbox.close()
            raise
        return sandbox

    async def _close(self) -> None:
        for sandbox in list(self._host.live):
            await sandbox.close()


def _check_idmaps(uids: Uids, shared: tuple[Path, ...]) -> None:
    """Refuse to start when a shared directory cannot be id-mapped into sandboxes."""
    for directory in shared:
        if directory.is_dir():
            try:
                attach.check_idmap(directory, uids.idmap(uids.range.first))
            except OSError as exc:
                raise SandboxError(
                    f"{directory} cannot be mounted id-mapped into sandboxes: {exc.strerror}"
                ) from None


def _bind_host_etc(etc: Path, names: list[str]) -> None:
    """Mount the host's /etc directories a sandbox sees (CA certificates, alternatives)
    read-only into the generated /etc, which bwrap then binds whole."""
    for name in names:
        fd = os.open(f"/etc/{name}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attach.bind(fd, etc / name, read_only=True)
        finally:
            os.close(fd)


def _set_child_subreaper() -> None:
    """Adopt orphaned descendants (bwrap's namespace init) so that we can reap them."""
    try:
        call("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0, what="PR_SET_CHILD_SUBREAPER")
    except OSError as exc:
        log.warning("%s", exc)
