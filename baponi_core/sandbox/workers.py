"""Threads of the server that run the sandbox runtime's blocking calls off the event loop.

The *spawner* starts bwrap as the sandbox uid. Credentials are per thread in the kernel;
glibc's ``setresuid`` changes every thread of the process, a raw ``syscall`` only the
calling one, so a thread that drops to the sandbox uid for good can start bwrap with
``vfork`` (CPython only uses vfork when no ``user=`` is asked for) instead of a full
``fork`` of the server, while the rest of the server keeps running as root.

The *janitor* frees what ended sandboxes held (cgroups, mounts, slots) after the answer
has gone out. It is started after the server entered its private mount namespace, so
its unmounts are made there.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from baponi_core.sandbox.libc import syscall

T = TypeVar("T")

# (setgroups, setresgid, setresuid) syscall numbers.
SYSCALLS = {"x86_64": (116, 119, 117), "aarch64": (159, 149, 147)}


def _become(uid: int) -> None:
    setgroups, setresgid, setresuid = SYSCALLS[platform.machine()]
    for number, args in ((setgroups, (0, None)), (setresgid, (uid,) * 3), (setresuid, (uid,) * 3)):
        syscall(number, *args, what=f"dropping the spawner thread to uid {uid}")


class Worker:
    """Runs calls one at a time on a thread of its own (as ``uid``, when given), or inline
    when ``thread`` is False."""

    def __init__(self, name: str, *, uid: int | None = None, thread: bool = True) -> None:
        if uid is not None and platform.machine() not in SYSCALLS:
            raise OSError(f"unsupported architecture {platform.machine()}")
        self._pool: ThreadPoolExecutor | None = None
        if uid is not None:
            self._pool = ThreadPoolExecutor(1, f"baponi-{name}", _become, (uid,))
        elif thread:
            self._pool = ThreadPoolExecutor(1, f"baponi-{name}")

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        if self._pool is None:
            return fn(*args)
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
