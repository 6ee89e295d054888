"""The few libc calls Python's standard library does not wrap (mount, prctl, raw syscall)."""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)


def call(name: str, *args: object, what: str) -> None:
    """Call ``name`` in libc; raise OSError naming ``what`` unless it returns 0."""
    if getattr(_libc, name)(*args) != 0:
        _raise(what)


def syscall(number: int, *args: object, what: str) -> int:
    """A raw system call; its result (a descriptor, say), or OSError naming ``what``."""
    result: int = _libc.syscall(number, *args)
    if result == -1:
        _raise(what)
    return result


def _raise(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")
