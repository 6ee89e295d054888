"""A filesystem of its own for each thread home and managed volume, so that its quota is one
the kernel keeps, and its mount shows no host path.

A thread home is a sparse ext4 image that holds just the quota (``threads/<org>/<thread>.img``
beside the home's directory), loop-mounted over that directory while something uses it:
an execution, a Files API call, a signed URL being served. Writes past it fail with
``ENOSPC`` in the sandbox and in the server alike; a file unlinked while open still takes
its blocks; the inode table is sized with the filesystem; and since the limit is the size
of the filesystem, nothing adds up across runs or concurrent uploads. A volume is the same
(``volumes/<org>/<volume>.img``), of its quota's size or, without one, of the server's
volume size; so that every mount a sandbox sees is the root of its filesystem, and the
fourth field of its ``/proc/self/mountinfo`` line reads ``/``, not where a bound directory
lies on the host.

Mounts are made in the server's private mount namespace (:mod:`baponi_core._sandbox.mountns`),
so they never show on the host and vanish with the server. They are made by ``mount(8)``,
which reuses the loop device an image is already attached to: an image is never mounted
twice, even while a superblock outlives its last mount (kept alive by a copy of the mount
table a sandbox took as it started). A mount idle for :data:`IDLE_S` is undone.

Needs root, ``mkfs.ext4`` and loop devices; without them homes and volumes stay plain
directories, a home's size sampled by the server (see ``docs/security.md``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from baponi_core._errors import Unavailable

log = logging.getLogger(__name__)

IDLE_S = 30.0  # how long a home stays mounted after its last use
RETIRE_EVERY_S = 5.0
BYTES_PER_INODE = 16 << 10  # mkfs.ext4's own default ratio: a 5 MiB home holds 320 files
JOURNAL_FROM = 64 << 20  # smaller filesystems cannot spare the 4 MiB a journal takes
MOUNT_OPTIONS = "loop,nosuid,nodev,noatime,noinit_itable"  # noinit_itable: no zeroing the
# inode tables behind the server's back, which would fill the sparse image on the host
MAX_MOUNTED = 512  # loop devices and superblocks held at once, at most


class DiskError(OSError):
    """A home's filesystem could not be made or mounted."""


@dataclass
class _Disk:
    mountpoint: Path
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    users: int = 0
    mounted: bool = False
    idle_since: float = 0.0

    @property
    def image(self) -> Path:
        return image_of(self.mountpoint)


def image_of(mountpoint: Path) -> Path:
    """The image of the filesystem mounted at a root's directory: beside it."""
    return mountpoint.with_name(mountpoint.name + ".img")


class Disks:
    """The mounted homes of one server. Its methods run on the event loop's thread, which
    is in the server's private mount namespace, and so are the processes they start."""

    def __init__(self, owner: int) -> None:
        self.owner = owner  # the sandbox uid: the root directory of every image is its
        self._disks: dict[Path, _Disk] = {}

    @staticmethod
    def unavailable() -> str | None:
        """Why homes cannot have filesystems of their own here, or None."""
        if os.geteuid() != 0:
            return "the server is not root"
        for tool in ("mkfs.ext4", "mount", "umount"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed"
        if not Path("/dev/loop-control").exists():
            return "there are no loop devices (/dev/loop-control)"
        return None

    @contextlib.asynccontextmanager
    async def hold(self, mountpoint: Path, size: int) -> AsyncIterator[bool]:
        """Keep the filesystem of ``mountpoint`` (a home's directory, made already)
        mounted there while the block runs; made with ``size`` bytes on first use. Gives
        whether it was made just now, empty (not with a directory's files copied in)."""
        disk, fresh = await self._join(mountpoint, size)
        try:
            yield fresh
        finally:
            disk.users -= 1
            disk.idle_since = time.monotonic()

    async def _join(self, mountpoint: Path, size: int) -> tuple[_Disk, bool]:
        """The disk of ``mountpoint``, mounted, with one more user; whether it was made
        just now. One retired while we waited for it is left for the one in its place."""
        while True:
            disk = self._disks.setdefault(mountpoint, _Disk(mountpoint))
            async with disk.lock:
                if self._disks.get(mountpoint) is not disk:
                    continue
                fresh = False
                if not disk.mounted:
                    await self._make_room()
                    fresh = await _mount(disk, size, self.owner)
                    disk.mounted = True
                disk.users += 1
                return disk, fresh

    async def discard(self, mountpoint: Path) -> bool:
        """Remove the filesystem of a root that is gone (a deleted volume): unmounted, its
        image deleted. False while something still holds it: to be tried again later."""
        disk = self._disks.get(mountpoint)
        if disk is not None:
            async with disk.lock:
                if disk.users or (disk.mounted and not await _unmount(mountpoint)):
                    return False
                self._disks.pop(mountpoint, None)
        image = image_of(mountpoint)
        image.unlink(missing_ok=True)
        image.with_name(f".{image.name}.new").unlink(missing_ok=True)
        return True

    def free(self, mountpoint: Path) -> int:
        """Bytes a held home can still take."""
        found = os.statvfs(mountpoint)
        return found.f_bavail * found.f_frsize

    def full(self, mountpoint: Path, size: int) -> bool:
        """Whether a held home of ``size`` bytes is (all but) full: no inode left, or less
        room than a quarter of it or 4 MiB, where a program's next write may not fit."""
        found = os.statvfs(mountpoint)
        room = found.f_bavail * found.f_frsize
        return found.f_favail == 0 or room < min(size // 4, 4 << 20)

    async def run(self) -> None:
        """Undo mounts idle for IDLE_S, until cancelled."""
        while True:
            await anyio.sleep(RETIRE_EVERY_S)
            await self._retire(time.monotonic() - IDLE_S)

    async def close(self) -> None:
        """Undo every mount nothing holds (the server's end undoes the rest)."""
        await self._retire(float("inf"))

    async def _make_room(self) -> None:
        mounted = [d for d in self._disks.values() if d.mounted]
        if len(mounted) < MAX_MOUNTED:
            return
        await self._retire(time.monotonic())
        if sum(d.mounted for d in self._disks.values()) >= MAX_MOUNTED:
            raise Unavailable("too many thread homes and volumes in use at once; try again")

    async def _retire(self, before: float) -> None:
        for path, disk in list(self._disks.items()):
            if disk.users or disk.idle_since > before or disk.lock.locked():
                continue
            async with disk.lock:  # a holder waiting for it finds it gone (_join)
                if disk.mounted and not disk.users:
                    disk.mounted = not await _unmount(path)
                if not disk.mounted and not disk.users:
                    self._disks.pop(path, None)


async def _mount(disk: _Disk, size: int, owner: int) -> bool:
    """Mount the image (made when missing); whether it was made just now, empty."""
    image = disk.image
    if not image.exists():
        if not any(os.scandir(disk.mountpoint)):
            await _create(image, size, owner, disk.mountpoint)
            return True
        # A root from before filesystems of their own: its files go into the new image.
        staging = _staging(disk.mountpoint)
        await _create(image, size, owner, staging)
        await _move_in(disk.mountpoint, staging)
    elif image.stat().st_size < image_size(size):
        await _grow(image, size)
    if _mounted(disk.mountpoint):  # an unmount that failed: it is in place still
        return False
    if any(os.scandir(disk.mountpoint)):
        staging = _staging(disk.mountpoint)
        await _mount_image(image, staging)
        await _move_in(disk.mountpoint, staging)
    await _mount_image(image, disk.mountpoint)
    return False


def image_size(size: int) -> int:
    """How large an image must be for ``size`` bytes to fit in its filesystem: with its
    inode table, journal, the room ext4 keeps back for delayed allocation (2%, at most
    16 MiB) and its group metadata (measured: 0.4-5% more than needed, 5% for 1 MiB)."""
    total = size + _inodes(size) * 256 + (4 << 20 if size >= JOURNAL_FROM else 0) + (64 << 10)
    total += min(total // 50, 16 << 20)
    return total + total // 256


def _inodes(size: int) -> int:
    return max(size // BYTES_PER_INODE, 16)


async def _create(image: Path, size: int, owner: int, mountpoint: Path) -> None:
    """Make the image and mount it at ``mountpoint``; it takes its name last, so that a
    crash on the way leaves no half-made one."""
    new = image.with_name(f".{image.name}.new")
    new.unlink(missing_ok=True)
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, image_size(size))
    finally:
        os.close(fd)
    journal = ["-J", "size=4"] if size >= JOURNAL_FROM else ["-O", "^has_journal"]
    await _tool(
        "mkfs.ext4", "-q", "-F", "-m", "0", "-N", str(_inodes(size)), "-I", "256", *journal,
        "-O", "^resize_inode",
        "-E", f"lazy_itable_init=1,lazy_journal_init=1,root_owner={owner}:{owner}",
        "--", str(new),
    )  # fmt: skip
    await _mount_new(new, mountpoint, size)
    os.rename(new, image)


async def _move_in(directory: Path, staging: Path) -> None:
    """Move what lies in a root's directory, under where its image is mounted, into the
    image, mounted at ``staging`` (:func:`_staging`) and unmounted after: the files of a
    root from before filesystems of their own, what an operator copied in, or what a
    migration cut short left (copied again: the same files). Then the directory is
    emptied. A file that cannot be moved in fails the mount, rather than show a root with
    files missing.

    Nothing runs on the directory or the image meanwhile (the disk's lock is held, and
    the image is mounted nowhere else). Both may hold what sandboxed code made: cp(1)
    copies links as links and never follows one, and ``--remove-destination`` makes it
    look at each name in the image with lstat and replace it, never write through it (a
    directory meeting a link there is an error, not a way out)."""
    try:
        await _tool(
            "cp", "-a", "--no-dereference", "--remove-destination", "--",
            f"{directory}/.", str(staging),
        )  # fmt: skip
    finally:
        await _unmount_staging(staging)
    _clear(directory)


def _staging(directory: Path) -> Path:
    """Where an image is mounted on its way in: beside the root, out of every sandbox's
    reach."""
    staging = directory.with_name(f".{directory.name}.new")
    staging.mkdir(mode=0o700, exist_ok=True)
    return staging


async def _unmount_staging(staging: Path) -> None:
    await _tool("umount", "--", str(staging))
    os.rmdir(staging)


def _mounted(path: Path) -> bool:
    return os.path.ismount(path)


async def _mount_new(image: Path, mountpoint: Path, size: int) -> None:
    """Mount a new, empty image, grown first should ``size`` bytes not fit in it (had
    :func:`image_size` guessed short), and leave only the home's own directory in it."""
    for _ in range(3):
        await _mount_image(image, mountpoint)
        found = os.statvfs(mountpoint)
        short = size - found.f_bavail * found.f_frsize
        if short <= 0:
            os.rmdir(mountpoint / "lost+found")  # the sandbox sees only its own files
            os.chmod(mountpoint, 0o700)
            return
        await _unmount(mountpoint)
        os.truncate(image, os.stat(image).st_size + short + short // 8 + (64 << 10))
        await _tool("resize2fs", "-f", "--", str(image))
    raise DiskError(f"{image} cannot be made to hold {size} bytes")


async def _grow(image: Path, size: int) -> None:
    """A quota raised since the image was made: the filesystem grows to it (never shrinks:
    a lowered quota binds new homes only)."""
    try:
        await _tool("e2fsck", "-f", "-p", "--", str(image))
        os.truncate(image, image_size(size))
        await _tool("resize2fs", "--", str(image))
    except DiskError as exc:
        log.warning("%s keeps its size: %s", image, exc)


def _clear(directory: Path) -> None:
    """Remove what lies in a directory (never following a link)."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


async def _mount_image(image: Path, mountpoint: Path) -> None:
    """Loop-mount ``image`` at ``mountpoint`` (mount(8) attaches the loop device, or reuses
    the one the image already has)."""
    await _tool("mount", "-t", "ext4", "-o", MOUNT_OPTIONS, "--", str(image), str(mountpoint))


async def _unmount(path: Path) -> bool:
    """Whether ``path`` is no longer mounted (a busy mount stays, to be retried)."""
    try:
        await _tool("umount", "--", str(path))
    except DiskError as exc:
        log.debug("%s stays mounted: %s", path, exc)
        return False
    return True


async def _tool(*argv: str) -> None:
    """Run one of the filesystem tools (an argument vector: no shell ever sees a path)."""
    done = await anyio.run_process(list(argv), check=False, stdin=subprocess.DEVNULL)
    if done.returncode:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise DiskError(f"{argv[0]} failed: {message[-1] if message else done.returncode}")
