"""Threads of the server that run the sandbox runtime's blocking calls off the event loop.

The *spawner* starts bwrap as the sandbox's host uid. Credentials are per thread in the
kernel; glibc's ``setresuid`` changes every thread of the process, a raw ``syscall`` only
the calling one. So one thread of the server takes the uid of each sandbox just while it
starts its bwrap, and can do so with ``vfork`` (CPython only uses vfork when no
``user=`` is asked for) instead of a full ``fork`` of the server, while the rest of the
server keeps running as root. The thread keeps root as its *saved* uid to switch back;
``execve`` sets the saved ids to the effective ones and gives a program that is not
set-uid no capabilities, so bwrap runs with the sandbox uid alone, nothing of root.

The *janitor* frees what ended sandboxes held (cgroups, mounts, slots, uids) after the
answer has gone out. It is started after the server entered its private mount
namespace, so its unmounts are made there.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from baponi_core._sandbox.libc import syscall

T = TypeVar("T")

# (setgroups, setresgid, setresuid) syscall numbers.
SYSCALLS = {"x86_64": (116, 119, 117), "aarch64": (159, 149, 147)}


def _no_groups() -> None:
    syscall(SYSCALLS[platform.machine()][0], 0, None, what="clearing the spawner's groups")


def _switch(uid: int, saved: int) -> None:
    """This thread's real and effective uid and gid become ``uid``; its saved ones
    ``saved``. To a uid other than 0, the gid first (root may still change it); back to
    0, the uid first (the saved 0 allows it, and brings the capabilities back)."""
    _, setresgid, setresuid = SYSCALLS[platform.machine()]
    calls = [(setresgid, (uid, uid, saved)), (setresuid, (uid, uid, saved))]
    for number, args in calls if uid != 0 else reversed(calls):
        syscall(number, *args, what=f"switching the spawner thread to uid {uid}")


def _as(uid: int, fn: Callable[..., T], args: tuple[object, ...]) -> T:
    try:
        _switch(uid, 0)
        return fn(*args)
    finally:
        _switch(0, 0)


class Worker:
    """Runs calls one at a time on a thread of its own, or inline when ``thread`` is
    False."""

    def __init__(self, name: str, *, thread: bool = True) -> None:
        self._pool = ThreadPoolExecutor(1, f"baponi-{name}") if thread else None

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        if self._pool is None:
            return fn(*args)
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


class Spawner:
    """Runs calls one at a time as a given uid (with no supplementary groups), on a thread
    of its own; inline, as ourselves, when ``switch`` is False (a server that is not
    root)."""

    def __init__(self, *, switch: bool) -> None:
        if switch and platform.machine() not in SYSCALLS:
            raise OSError(f"unsupported architecture {platform.machine()}")
        self._pool = ThreadPoolExecutor(1, "baponi-spawner", _no_groups) if switch else None

    async def call(self, uid: int | None, fn: Callable[..., T], *args: object) -> T:
        if self._pool is None:
            return fn(*args)
        if uid is None:
            raise ValueError("a spawner that switches needs a uid to switch to")
        return await asyncio.wrap_future(self._pool.submit(_as, uid, fn, args))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
