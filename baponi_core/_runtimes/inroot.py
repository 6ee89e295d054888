"""Paths inside an image's root, resolved as the sandbox will see them and never outside
it: ``openat2`` with ``RESOLVE_IN_ROOT`` makes the kernel treat the root as ``/`` for
every ``..`` and absolute symlink on the way."""

from __future__ import annotations

import ctypes
import os
import stat

from baponi_core._sandbox.libc import syscall

SYS_OPENAT2 = 437  # the same on every architecture
RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT = 0x02, 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


def open_in_root(root: int, path: str, flags: int = os.O_PATH) -> int:
    """A descriptor of ``path`` (absolute, as inside the image) below the directory open as
    ``root``; OSError if there is none."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    return syscall(
        SYS_OPENAT2,
        ctypes.c_int(root),
        path.encode(),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
        what=f"open {path} in the image",
    )


def executable(root: int, path: str) -> bool:
    """Whether ``path`` is, inside the image, a regular file someone may execute."""
    try:
        fd = open_in_root(root, path)
    except OSError:
        return False
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    return stat.S_ISREG(mode) and bool(mode & 0o111)
