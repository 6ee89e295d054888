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

from pathlib import Path

from baponi_core.sandbox.libc import call

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV = 2, 4
MS_REC, MS_PRIVATE, MS_SHARED = 16384, 1 << 18, 1 << 20
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
    """Enter a private mount namespace and mount the shared tmpfs at ``/run/baponi``.

    Affects the calling thread and the threads and processes it starts afterwards,
    which is where sandboxes are launched from and mounted into.
    """
    PRIVATE_BASE.mkdir(parents=True, exist_ok=True)
    call("unshare", CLONE_NEWNS, what="unshare(CLONE_NEWNS)")
    mount("none", Path("/"), None, MS_REC | MS_PRIVATE, None)
    # Not noexec: the agent is executed from here, through each sandbox's bind.
    mount("tmpfs", PRIVATE_BASE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0711,size=25%")
    mount("none", PRIVATE_BASE, None, MS_SHARED, None)
    return PRIVATE_BASE
