"""Make the server's sandbox-visible directories reachable by the unprivileged sandbox uid.

bwrap resolves every bind source by path as the sandbox uid, so a thread home under
``/root/.baponi`` (``/root`` is 0700) cannot be mounted. Instead of loosening the
permissions of the operator's directories, the server moves itself into a private
mount namespace and bind-mounts those directories under a tmpfs at ``/run/baponi``.
Nothing shows on the host, and the mounts vanish with the server.
"""

from __future__ import annotations

from pathlib import Path

from baponi_core.sandbox.libc import call

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
EXPOSED = Path("/run/baponi")


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


def expose(directories: dict[str, Path]) -> dict[Path, Path]:
    """Bind each directory at ``/run/baponi/<name>``; return a host -> exposed path map.

    Affects the calling thread and the threads and processes it starts afterwards,
    which is where sandboxes are launched from.
    """
    EXPOSED.mkdir(parents=True, exist_ok=True)
    call("unshare", CLONE_NEWNS, what="unshare(CLONE_NEWNS)")
    mount("none", Path("/"), None, MS_REC | MS_PRIVATE, None)
    mount("tmpfs", EXPOSED, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0711,size=1m")
    exposed = {}
    for name, source in directories.items():
        target = EXPOSED / name
        target.mkdir(mode=0o711)
        mount(str(source), target, None, MS_BIND, None)
        exposed[source] = target
    return exposed
