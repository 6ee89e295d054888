"""The few libc calls Python's standard library does not wrap (mount, prctl, raw syscall)."""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)


def call(name: str, *args: object, what: str) -> None:
    """Call ``name`` in libc; raise OSError naming ``what`` when it fails."""
    if getattr(_libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
