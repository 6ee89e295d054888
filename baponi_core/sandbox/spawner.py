"""Start sandboxes from a thread that runs as the sandbox uid.

Credentials are per thread in the kernel; glibc's ``setresuid`` changes every thread of
the process, a raw ``syscall`` only the calling one. A dedicated thread that drops to
the sandbox uid for good can therefore:

- start bwrap with ``vfork`` (CPython only uses vfork when no ``user=`` is asked for),
  instead of a full ``fork`` of the server;
- set the rlimits of the sandbox's init with ``prlimit``, which needs no
  ``CAP_SYS_RESOURCE`` when the caller's uid matches the target's.

The rest of the server keeps running as root (cgroups, storage, database).
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


class Spawner:
    """Runs calls on the sandbox-uid thread, or inline when there is no uid to switch to."""

    def __init__(self, uid: int | None) -> None:
        if uid is not None and platform.machine() not in SYSCALLS:
            raise OSError(f"unsupported architecture {platform.machine()}")
        self._pool = (
            None
            if uid is None
            else ThreadPoolExecutor(1, "baponi-spawner", initializer=_become, initargs=(uid,))
        )

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        if self._pool is None:
            return fn(*args)
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
