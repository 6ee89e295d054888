"""What an unpacked image must not bring into a sandbox, taken out, and the places a
sandbox's mounts go, made.

umoci has already kept every layer entry inside the root (whiteouts, ``..`` and absolute
names, links pointing outside) and made device nodes empty files (``--rootless``). This
walk, from directory descriptors and never following a link, removes what could still
act on its own, and strips what could raise privileges:

- device nodes, FIFOs and sockets are removed (a FIFO or socket in a read-only root is
  a way for two sandboxes of one image to meet, a device a way to the host's hardware);
- setuid and setgid bits, and file capabilities (``security.capability``), are removed:
  sandboxes run with ``no_new_privs`` on ``nosuid`` mounts, so they would do nothing, and
  without them no setuid binary reaches a sandbox at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from baponi_core._errors import RuntimeRefused

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
PRIVILEGE_BITS = stat.S_ISUID | stat.S_ISGID
CAPABILITIES = "security.capability"
REMOVED_TYPES = (stat.S_ISCHR, stat.S_ISBLK, stat.S_ISFIFO, stat.S_ISSOCK)
# Where a sandbox's mounts go: bwrap cannot make them in a root it binds read-only.
MOUNT_POINTS = ("proc", "dev", "tmp", "etc", "home/baponi", "data", "run/baponi", "run/secrets")
# Gone from every image: sysfs is never mounted in a sandbox (an image's /sys is at best
# empty, at worst a fake for code that trusts it), and the sandbox's users are ours, so
# the image's password hashes have nothing to do there.
REMOVED_PATHS = ("sys", "etc/shadow", "etc/shadow-", "etc/gshadow", "etc/gshadow-")


def scrub(root: Path) -> int:
    """Remove special files and privileges below ``root``; the bytes it takes on disk."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for parent, entry in _walk(root):
        info = entry.stat(follow_symlinks=False)
        if any(kind(info.st_mode) for kind in REMOVED_TYPES):
            os.unlink(entry.name, dir_fd=parent)
            continue
        if (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            size += info.st_blocks * 512
        if stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode):
            _unprivilege(parent, entry.name, info)
    return size


def _walk(root: Path) -> Iterator[tuple[int, os.DirEntry[str]]]:
    """Every entry below ``root`` with the descriptor of its directory, depth first; one
    descriptor open per level. Symbolic links are entries, never followed."""
    top = os.open(root, DIR_FLAGS)
    stack = [(top, os.scandir(top))]
    try:
        while stack:
            parent, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                entries.close()
                os.close(parent)
                stack.pop()
                continue
            yield parent, entry
            if entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):  # removed as it was seen
                    child = os.open(entry.name, DIR_FLAGS, dir_fd=parent)
                    stack.append((child, os.scandir(child)))
    finally:
        for parent, entries in stack:
            entries.close()
            os.close(parent)


def _unprivilege(parent: int, name: str, info: os.stat_result) -> None:
    flags = DIR_FLAGS if stat.S_ISDIR(info.st_mode) else FILE_FLAGS
    fd = os.open(name, flags, dir_fd=parent)
    try:
        if info.st_mode & PRIVILEGE_BITS:
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~PRIVILEGE_BITS)
        try:
            os.removexattr(fd, CAPABILITIES)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
    finally:
        os.close(fd)


def make_mount_points(root: Path, etc_files: Iterable[str]) -> None:
    """Make each of :data:`MOUNT_POINTS` a real directory (whatever the image had there
    goes: a link, say, that would take a mount elsewhere), remove :data:`REMOVED_PATHS`,
    and make each of ``etc_files`` a regular file in /etc, for the generated one bound
    over it."""
    top = os.open(root, DIR_FLAGS)
    try:
        for path in MOUNT_POINTS:
            os.close(_directory(top, path, replace=True))
        for path in REMOVED_PATHS:
            _remove(top, path)
        etc = _directory(top, "etc", replace=True)
        try:
            for name in etc_files:
                _plain_file(etc, name)
        finally:
            os.close(etc)
    finally:
        os.close(top)


def make_workdir(root: Path, workdir: str) -> None:
    """Make the image's working directory where it is missing, along real directories
    only; refuse one that is not a plain absolute path."""
    path = PurePosixPath(workdir)
    if not path.is_absolute() or ".." in path.parts or "\0" in workdir:
        raise RuntimeRefused(f"the image's WorkingDir {workdir!r} is not a plain absolute path")
    top = os.open(root, DIR_FLAGS)
    try:
        if len(path.parts) > 1:
            os.close(_directory(top, str(path.relative_to("/")), replace=False))
    except NotADirectoryError:
        raise RuntimeRefused(
            f"the image's WorkingDir {workdir} passes through something that is not a directory"
        ) from None
    finally:
        os.close(top)


def _directory(top: int, path: str, replace: bool) -> int:
    """A descriptor of the directory ``path`` below ``top``, made where missing. A part that
    is not a directory is replaced (``replace``) or raises NotADirectoryError."""
    fd = os.dup(top)
    try:
        for part in path.split("/"):
            try:
                info: os.stat_result | None = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                info = None
            if info is not None and not stat.S_ISDIR(info.st_mode):
                if not replace:
                    raise NotADirectoryError(part)
                os.unlink(part, dir_fd=fd)
                info = None
            if info is None:
                os.mkdir(part, 0o755, dir_fd=fd)
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _plain_file(directory: int, name: str) -> None:
    try:
        info: os.stat_result | None = os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        info = None
    if info is not None and stat.S_ISREG(info.st_mode):
        return
    if info is not None and stat.S_ISDIR(info.st_mode):
        shutil.rmtree(name, dir_fd=directory)
    elif info is not None:
        os.unlink(name, dir_fd=directory)
    os.close(
        os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=directory)
    )


def _remove(top: int, path: str) -> None:
    """Remove ``path`` below ``top`` whatever it is, following no link on the way (its
    parents are the mount points just made real directories, or the root itself)."""
    parent, _, name = path.rpartition("/")
    directory = os.open(parent, DIR_FLAGS, dir_fd=top) if parent else os.dup(top)
    try:
        info = os.stat(name, dir_fd=directory, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(name, dir_fd=directory)
        else:
            os.unlink(name, dir_fd=directory)
    except FileNotFoundError:
        pass
    finally:
        os.close(directory)
