"""The server's private mount namespace, and in it the directory it shares with sandboxes.

bwrap runs as the unprivileged sandbox uid and resolves every path it binds as that uid,
so the generated /etc and the slots (:mod:`slots`) must be reachable by it, while the
server's home stays private. The server therefore moves itself into a private mount
namespace and keeps those files on a tmpfs at ``/run/baponi``, traversable but not
listable. The tmpfs is *shared*, so that what the server mounts in a slot later reaches
the sandbox bound to it (:mod:`attach`). Nothing shows on the host, and it all vanishes
with the server.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
from pathlib import Path

from baponi_core._sandbox.libc import call

log = logging.getLogger(__name__)

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV = 2, 4
MS_REC, MS_PRIVATE, MS_SHARED = 16384, 1 << 18, 1 << 20
MNT_DETACH = 2
PRIVATE_BASE = Path("/run/baponi")


def mount(source: str, target: Path, fstype: str | None, flags: int, data: str | None) -> None:
    call(
        "mount",
        source.encode(),
        str(target).encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
        what=f"mount {target}",
    )


def unmount(target: Path) -> None:
    call("umount2", str(target).encode(), 0, what=f"umount {target}")


def private_base() -> Path:
    """A directory of the calling runtime's own on the shared tmpfs at ``/run/baponi`` of
    the server's private mount namespace, which the first runtime of the process enters.

    Entering affects the calling thread and the threads and processes it starts
    afterwards, which is where sandboxes are launched from and mounted into. A program
    may open several cores (each its runtime): the later ones, on a thread already in
    the namespace, share it, each in a directory of its own (:func:`release` removes it).
    """
    if _namespace() not in _made:
        PRIVATE_BASE.mkdir(parents=True, exist_ok=True)
        call("unshare", CLONE_NEWNS, what="unshare(CLONE_NEWNS)")
        mount("none", Path("/"), None, MS_REC | MS_PRIVATE, None)
        # Not noexec: the agent is executed from here, through each sandbox's bind.
        mount("tmpfs", PRIVATE_BASE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0711,size=25%")
        mount("none", PRIVATE_BASE, None, MS_SHARED, None)
        _made.add(_namespace())
    base = PRIVATE_BASE / f"runtime-{next(_runtimes)}"
    base.mkdir(mode=0o711)
    return base


def release(base: Path, mounted: list[Path]) -> None:
    """Unmount ``mounted`` (what the runtime bound below ``base``), then remove ``base``:
    only when nothing is mounted below it any more, so that the removal can never reach
    into a thread home or a host directory."""
    for target in mounted:
        try:
            call("umount2", str(target).encode(), MNT_DETACH, what=f"umount {target}")
        except OSError as exc:
            log.warning("%s", exc)
    inside = str(base) + "/"
    if any(point.startswith(inside) for point in _mount_points()):
        log.warning("%s kept: something is still mounted below it", base)
        return
    shutil.rmtree(base, ignore_errors=True)


_made: set[str] = set()  # the mount namespaces this process made, as /proc names them
_runtimes = itertools.count()


def _namespace() -> str:
    return os.readlink("/proc/thread-self/ns/mnt")


def _mount_points() -> list[str]:
    """The mount points of the calling thread's namespace (octal escapes decoded)."""
    text = Path("/proc/thread-self/mountinfo").read_text()
    points = [line.split(" ")[4] for line in text.splitlines() if line]
    return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), p) for p in points]
