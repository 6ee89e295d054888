"""Mounts made by the server into a sandbox that is already running (root only).

Each sandbox binds its slot's ``home`` and ``data`` directories (see
:mod:`baponi_core._sandbox.slots`) from a tmpfs that is *shared* in the server's private
mount namespace, and bwrap leaves its own mounts *slaves* of it. A mount the server then
places in the slot therefore appears, by propagation, at the same place in the sandbox:
a thread home at ``/home/baponi``, a volume at ``/data/<slug>``. The kernel locks
propagated mounts, so sandboxed code can neither unmount nor remount them.

A mount is cloned from a descriptor the server opened (``open_tree``), never from a path,
so a link planted by sandboxed code is never followed; it gets ``nosuid`` and ``nodev``
(and ``ro``) before it is moved into place, so the sandbox never sees it otherwise. A
thread home or a volume is also *id-mapped* (``idmap``, a user namespace from
:mod:`idmap`): stored files belong to one owner, and each sandbox, running as a host uid
of its own, sees them as its own through the mount, and stores what it makes as theirs.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from baponi_core._sandbox.libc import call, syscall
from baponi_core._sandbox.mountns import MS_NODEV, MS_NOSUID, mount

# The new mount API's syscall numbers are the same on every architecture.
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
OPEN_TREE_CLONE, AT_EMPTY_PATH, AT_FDCWD = 0x1, 0x1000, -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
MOUNT_ATTR_IDMAP = 0x100000
MNT_DETACH = 2


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def bind(fd: int, target: Path, read_only: bool, idmap: int | None = None) -> None:
    """Mount the directory open as ``fd`` (only it, none of its submounts) at ``target``,
    id-mapped by the user namespace ``idmap`` when given."""
    tree = _clone(fd, read_only, idmap, str(target))
    try:
        syscall(
            SYS_MOVE_MOUNT,
            tree,
            b"",
            AT_FDCWD,
            str(target).encode(),
            MOVE_MOUNT_F_EMPTY_PATH,
            what=f"move_mount to {target}",
        )
    finally:
        os.close(tree)


def check_idmap(directory: Path, idmap: int) -> None:
    """Raise OSError unless ``directory``'s filesystem can be id-mapped: the mount is
    made, detached, and dropped."""
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(_clone(fd, True, idmap, str(directory)))
    finally:
        os.close(fd)


def _clone(fd: int, read_only: bool, idmap: int | None, what: str) -> int:
    """A detached copy of the mount of ``fd``, with its attributes set."""
    tree = syscall(
        SYS_OPEN_TREE,
        fd,
        b"",
        OPEN_TREE_CLONE | AT_EMPTY_PATH | os.O_CLOEXEC,
        what=f"open_tree for {what}",
    )
    try:
        wanted = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (MOUNT_ATTR_RDONLY if read_only else 0)
        if idmap is not None:
            wanted |= MOUNT_ATTR_IDMAP
        attr = _MountAttr(wanted, 0, 0, 0 if idmap is None else idmap)
        syscall(
            SYS_MOUNT_SETATTR,
            tree,
            b"",
            AT_EMPTY_PATH,
            ctypes.byref(attr),
            ctypes.sizeof(attr),
            what=f"mount_setattr for {what}",
        )
    except BaseException:
        os.close(tree)
        raise
    return tree


def tmpfs(target: Path, size: int, owner: int, mode: int) -> None:
    """A fresh tmpfs of ``size`` bytes at ``target``, its root owned by ``owner``."""
    options = f"size={size},mode={mode:o},uid={owner},gid={owner}"
    mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)


def detach(target: Path) -> None:
    """Unmount ``target`` here and, by propagation, in the sandbox (if it still lives)."""
    call("umount2", str(target).encode(), MNT_DETACH, what=f"umount {target}")
