"""Files under a directory on local disk, reached without ever following a link.

Thread homes are written by sandboxed code, so anything in them may be a trap: a symlink to
``/etc/shadow`` or to the server's database, a FIFO that blocks a reader, a hard link. Every
operation here walks from an fd of the root, one component at a time, with ``O_NOFOLLOW``:
a symlink anywhere on the way is "not found", whoever made it and whenever (no check-then-use
race). Blocking calls; run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from baponi_core._errors import Conflict, NotFound, ValidationError

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO cannot block
MAX_LISTED = 10_000
# ELOOP: a symlink on the way; ENXIO: a unix socket
NOT_THERE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO)
MAX_DEPTH = 512  # deeper than any path a request can name (1024 bytes)


@dataclass(frozen=True)
class Entry:
    path: str
    size: int
    modified: float
    is_directory: bool

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


@dataclass
class Upload:
    """A file being written: invisible (``O_TMPFILE``) until :meth:`LocalTree.commit`."""

    parent: int
    name: str
    fd: int
    written: int = 0

    def close(self) -> None:
        for fd in (self.fd, self.parent):
            with contextlib.suppress(OSError):
                os.close(fd)


class LocalTree:
    """The files below ``root``, owned by ``owner`` (the sandbox uid) when set."""

    def __init__(self, root: Path, owner: int | None) -> None:
        self.root = root
        self.owner = owner

    @contextlib.contextmanager
    def directory(
        self, names: tuple[str, ...], create: bool = False, top: int | None = None
    ) -> Iterator[int]:
        """An fd of the directory at ``names`` below the root (or below ``top``, an fd);
        missing ones are made when ``create``."""
        fd = os.dup(top) if top is not None else _open(self.root, O_DIR)
        try:
            for name in names:
                fd, parent = self._step(fd, name, create), fd
                os.close(parent)
            yield fd
        finally:
            os.close(fd)

    def _step(self, parent: int, name: str, create: bool) -> int:
        try:
            return _open(name, O_DIR, parent)
        except NotFound:
            if not create:
                raise
        with contextlib.suppress(FileExistsError):  # made meanwhile: the open below decides
            os.mkdir(name, 0o700, dir_fd=parent)
            if self.owner is not None:
                os.chown(name, self.owner, self.owner, dir_fd=parent, follow_symlinks=False)
        return _open(name, O_DIR, parent)

    def exists(self, names: tuple[str, ...]) -> bool:
        try:
            with self.directory(names):
                return True
        except NotFound:
            return False

    def children(self, names: tuple[str, ...]) -> list[str]:
        """The directories directly below ``names`` (none if it is missing); links left out."""
        try:
            with self.directory(names) as fd, os.scandir(fd) as found:
                return sorted(e.name for e in found if e.is_dir(follow_symlinks=False))
        except NotFound:
            return []

    def entries(self, base: tuple[str, ...], prefix: tuple[str, ...]) -> list[Entry]:
        """Directories and regular files under ``prefix`` (or that file), recursively; paths
        relative to ``base``. Links, FIFOs, sockets and hard-linked files are left out, as
        downloads refuse them, and so is anything deeper than :data:`MAX_DEPTH`. A root not
        made yet lists empty."""
        try:
            with self.directory(base) as top, self.directory(prefix[:-1], top=top) as parent:
                if not prefix:
                    return _listing(parent, "")
                info = os.stat(prefix[-1], dir_fd=parent, follow_symlinks=False)
                here = "/".join(prefix)
                if _served(info):
                    return [Entry(here, info.st_size, info.st_mtime, False)]
                if not stat.S_ISDIR(info.st_mode):
                    return []
                with _opened(prefix[-1], O_DIR, parent) as fd:
                    return _listing(fd, here + "/")
        except (NotFound, FileNotFoundError):
            return []

    def files(self, base: tuple[str, ...]) -> dict[str, tuple[int, float]]:
        """Every served file below ``base`` (no count limit): relative path -> size, mtime."""
        with self.directory(base) as top, contextlib.closing(_descend(top)) as found:
            return {rel: (i.st_size, i.st_mtime) for rel, i in found if _served(i)}

    def usage(self, base: tuple[str, ...]) -> int:
        """Bytes allocated to the entries below ``base``, every kind counted, none followed
        (an empty root holds 0). A tree deeper than :data:`MAX_DEPTH` raises :class:`TooDeep`."""
        with self.directory(base) as top, contextlib.closing(_descend(top, strict=True)) as found:
            return sum(info.st_blocks * 512 for _, info in found)

    def open_read(self, names: tuple[str, ...]) -> tuple[int, int]:
        """An fd of the regular file at ``names`` and its size."""
        with self.directory(names[:-1]) as parent:
            fd = _open(names[-1], O_FILE, parent)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            if stat.S_ISDIR(info.st_mode):
                raise ValidationError("path is a directory, not a file")
            raise NotFound("file not found (only regular files with one link are served)")
        os.set_blocking(fd, True)
        return fd, info.st_size

    def begin_upload(self, root: tuple[str, ...], names: tuple[str, ...]) -> Upload:
        """A file on its way to ``names`` below ``root``, making the directories between
        them but never ``root`` itself: a root that is gone (a deleted volume's, swept)
        stays gone (NotFound)."""
        with self.directory(root) as top, self.directory(names[:-1], True, top) as parent:
            keep = os.dup(parent)
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=keep)
            if self.owner is not None:
                os.fchown(fd, self.owner, self.owner)
        except BaseException:
            os.close(keep)
            raise
        return Upload(keep, names[-1], fd)

    def commit(self, upload: Upload) -> None:
        """Give the written file its name, replacing a file (or link) of that name at once."""
        staging = f".baponi-upload-{secrets.token_hex(8)}"
        os.link(
            f"/proc/self/fd/{upload.fd}", staging, dst_dir_fd=upload.parent, follow_symlinks=True
        )
        try:
            os.rename(staging, upload.name, src_dir_fd=upload.parent, dst_dir_fd=upload.parent)
        except OSError as exc:
            os.unlink(staging, dir_fd=upload.parent)
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise Conflict("a directory of that name is in the way") from None
            raise

    def delete(self, names: tuple[str, ...]) -> None:
        """Remove a file, link or whole directory; a link is removed, never followed."""
        with self.directory(names[:-1]) as parent:
            try:
                info = os.stat(names[-1], dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                raise NotFound("file not found") from None
            if stat.S_ISDIR(info.st_mode):
                _remove_tree(parent, names[-1])
            else:
                os.unlink(names[-1], dir_fd=parent)


def _open(name: str | Path, flags: int, dir_fd: int | None = None) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in NOT_THERE:
            raise NotFound("file not found") from None
        raise


@contextlib.contextmanager
def _opened(name: str, flags: int, dir_fd: int) -> Iterator[int]:
    fd = _open(name, flags, dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


class TooDeep(Exception):
    """A tree nested deeper than :data:`MAX_DEPTH`."""


def _served(info: os.stat_result) -> bool:
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1


def _listing(top: int, prefix: str) -> list[Entry]:
    found: list[Entry] = []
    with contextlib.closing(_descend(top)) as entries:
        for rel, info in entries:
            if len(found) >= MAX_LISTED:
                break
            if _served(info):
                found.append(Entry(prefix + rel, info.st_size, info.st_mtime, False))
            elif stat.S_ISDIR(info.st_mode):
                found.append(Entry(prefix + rel, 0, info.st_mtime, True))
    return found


def _descend(top: int, strict: bool = False) -> Generator[tuple[str, os.stat_result]]:
    """Every entry below ``top``, depth first in name order, with its own ``lstat``.

    Holds one fd per level, so neither a wide nor a deep tree made by sandboxed code
    exhausts descriptors or the stack. Below :data:`MAX_DEPTH` levels it stops descending,
    or raises :class:`TooDeep` when ``strict``.
    """
    levels = [(os.dup(top), "", iter(_names(top)))]
    try:
        while levels:
            fd, rel, names = levels[-1]
            name = next(names, None)
            if name is None:
                levels.pop()
                os.close(fd)
                continue
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield rel + name, info
            if not stat.S_ISDIR(info.st_mode):
                continue
            if len(levels) >= MAX_DEPTH:
                if strict:
                    raise TooDeep(f"directories nested deeper than {MAX_DEPTH} levels")
                continue
            with contextlib.suppress(NotFound):
                child = _open(name, O_DIR, fd)
                levels.append((child, f"{rel}{name}/", iter(_names(child))))
    finally:
        for fd, _, _ in levels:
            os.close(fd)


def _names(fd: int) -> list[str]:
    try:
        return sorted(os.listdir(fd))
    except PermissionError:  # a server not running as root meets a directory made 000
        return []


def _remove_tree(parent: int, name: str) -> None:
    """Iterative: move every subdirectory up beside the tree, then empty and remove each."""
    pending = [name]
    while pending:
        current = pending[-1]
        with _opened(current, O_DIR, parent) as fd:
            for child in os.listdir(fd):
                info = os.stat(child, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    staged = f".baponi-delete-{secrets.token_hex(8)}"
                    os.rename(child, staged, src_dir_fd=fd, dst_dir_fd=parent)
                    pending.append(staged)
                else:
                    os.unlink(child, dir_fd=fd)
        if pending[-1] == current:
            os.rmdir(current, dir_fd=parent)
            pending.pop()
