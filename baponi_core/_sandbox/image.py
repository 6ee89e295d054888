"""The root filesystem a sandbox runs on: its *runtime*, one immutable generation of it,
and the hold a sandbox keeps on that generation while it lives.

A runtime is either an image (a read-only root filesystem of its own, made by
``baponi runtimes import``) or the *host* runtime (the host's ``/usr`` read-only with
``/usr/local`` hidden, what an operator chooses deliberately). Runtimes live in a
directory of the operator's (:mod:`baponi_core._runtimes`), one generation per import::

    <runtimes>/<name>/<generation>/runtime.json   what this module reads back as Runtime
    <runtimes>/<name>/<generation>/rootfs/        the image's root (not for the host one)

Generation names sort in the order they were made; the last is the current one. A
replace adds a generation; an older one is removed once no sandbox holds it. Holding is
a shared ``flock`` on the generation's directory, which every process of every server
sharing the directory honours; removing takes it exclusively, without waiting.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from baponi_core._sandbox.rootfs import HOME, HOST_PATH, base_env

log = logging.getLogger(__name__)

ROOTFS = "rootfs"
DESCRIPTION = "runtime.json"
HIDDEN = "."  # names in the runtimes directory that are no runtime: being made or removed
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Runtime:
    """One generation of a runtime, as sandboxes use it. ``directory`` None: the built-in
    host runtime of callers that name none (a library's, a test's)."""

    name: str
    directory: Path | None
    host: bool
    env: tuple[tuple[str, str], ...] = (("PATH", HOST_PATH),)
    workdir: str = HOME
    interpreters: tuple[tuple[str, tuple[str, ...]], ...] = ()
    entrypoint: tuple[str, ...] = ()  # recorded from the image; nothing runs it yet

    @property
    def rootfs(self) -> Path | None:
        """The image's root; None for the host runtime."""
        return None if self.host or self.directory is None else self.directory / ROOTFS

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(language for language, _ in self.interpreters)

    def interpreter(self, language: str) -> tuple[str, ...] | None:
        """The argv prefix that runs a script of ``language``; None if it has none."""
        return dict(self.interpreters).get(language)

    def base_env(self) -> dict[str, str]:
        return base_env(dict(self.env))


HOST_INTERPRETERS = (
    ("bash", ("/bin/bash",)),
    ("node", ("/usr/bin/node",)),
    ("python", ("/usr/bin/python3",)),
)
HOST = Runtime(name="host", directory=None, host=True, interpreters=HOST_INTERPRETERS)


class Hold:
    """A sandbox's shared lock on its runtime's generation, so that no replace or delete
    removes it under the sandbox. Open while the sandbox lives."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.fd: int | None = None
        if runtime.directory is None:
            return
        fd = os.open(runtime.directory, _DIR)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # only a removal holds it exclusively
            # Still there, under its name: not removed between our open and our lock.
            if not os.path.samestat(os.fstat(fd), os.stat(runtime.directory)):
                raise FileNotFoundError(f"runtime {runtime.name}: this generation was removed")
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def root(self) -> int | None:
        """An O_PATH descriptor of the image's root, for bwrap (the caller closes it)."""
        if self.fd is None or self.runtime.host:
            return None
        return os.open(
            ROOTFS, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd
        )

    def release(self) -> None:
        """Let go of the generation, and remove it if it is no longer current: the last
        sandbox of a replaced or deleted runtime takes its files with it."""
        if self.fd is None:
            return
        try:  # where it is now: a deleted runtime's generations were moved
            where = Path(os.readlink(f"/proc/self/fd/{self.fd}"))
        finally:
            os.close(self.fd)
            self.fd = None
        if where.is_absolute() and stale(where):
            retire(where)


def generations(runtime: Path) -> list[str]:
    """The generations of the runtime directory ``runtime``, oldest first."""
    try:
        return sorted(n for n in os.listdir(runtime) if not n.startswith(HIDDEN))
    except (FileNotFoundError, NotADirectoryError):
        return []


def stale(generation: Path) -> bool:
    """Whether no new sandbox will use ``generation``: its runtime was deleted, or it is
    not the newest."""
    runtime = generation.parent
    if runtime.name.startswith(HIDDEN):
        return True
    names = generations(runtime)
    return not names or names[-1] != generation.name


def retire(directory: Path, runtimes: Path | None = None) -> bool:
    """Remove ``directory`` (a generation, or a directory of ``runtimes`` left by an
    import that died) unless someone holds it; whether it went."""
    try:
        fd = os.open(directory, _DIR)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # in use: its last holder retires it
        if not os.path.samestat(os.fstat(fd), os.stat(directory)):
            return True  # retired by someone else meanwhile
        # Out of sight first (a rename is atomic), then deleted at leisure, by descriptor,
        # never following a link (shutil.rmtree's fd-based walk on Linux).
        trash = (runtimes or directory.parent.parent) / f"{HIDDEN}trash-{secrets.token_hex(8)}"
        os.rename(directory, trash)
        shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(OSError):  # a deleted runtime's directory, once empty
            if directory.parent.name.startswith(HIDDEN):
                directory.parent.rmdir()
        return True
    except OSError as exc:
        log.warning("could not remove runtime files %s: %s", directory, exc)
        return False
    finally:
        os.close(fd)
