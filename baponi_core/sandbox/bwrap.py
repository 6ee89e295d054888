"""The bubblewrap command line of one sandbox: everything that does not depend on a request.

Every path a sandbox sees is listed here. Host directories that hold state reach it as
file descriptors the server opened, or through its slot (:mod:`slots`), so bwrap, running
as the unprivileged sandbox uid, needs no access to the server's directories. Its init is
the agent (:mod:`agent`), as pid 1; processes are started later, through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from baponi_core.sandbox.rootfs import HOME, SANDBOX_UID
from baponi_core.sandbox.slots import Slot
from baponi_core.sandbox.spec import DATA, RUN_DIR, Mount, Shape


@dataclass(frozen=True)
class Fds:
    """Descriptors the server opened for bwrap (numbers as seen by the child)."""

    etc: int
    seccomp: int
    info: int
    control: int  # the agent's end of its socket


@dataclass(frozen=True)
class Bound:
    """The home and volumes fixed on the command line, for a server that cannot mount into
    a running sandbox (not root). ``home`` is a descriptor, or None for a fresh tmpfs."""

    home: int | None
    mounts: tuple[tuple[Mount, int], ...] = ()


def command(
    bwrap: str, shape: Shape, fds: Fds, etc_binds: list[str], slot: Slot, bound: Bound | None
) -> list[str]:
    """``bound`` None: /home/baponi and /data are the slot's, for mounts made later."""
    limits = shape.limits
    argv = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "sandbox",
        "--ro-bind",
        "/usr",
        "/usr",
        # /usr/local holds the host's own installs (possibly this server): hide it.
        "--perms",
        "0755",
        "--tmpfs",
        "/usr/local",
        "--remount-ro",
        "/usr/local",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--ro-bind-fd",
        str(fds.etc),
        "/etc",
    ]
    for name in etc_binds:
        argv += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    argv += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--size",
        str(limits.tmp_bytes),
        "--tmpfs",
        "/tmp",
    ]
    if bound is None:
        # Read-only and empty until the server mounts a home on it (and volumes below
        # /data): those mounts reach the sandbox by propagation, with their own flags.
        argv += ["--ro-bind", str(slot.home), HOME, "--ro-bind", str(slot.data), DATA]
    else:
        argv += _bound(bound, limits.home_bytes)
    argv += [
        "--ro-bind",
        str(slot.run),
        RUN_DIR,
        "--remount-ro",
        "/",
        "--chdir",
        "/",
        "--clearenv",
        "--seccomp",
        str(fds.seccomp),
        "--info-fd",
        str(fds.info),
        "--as-pid-1",
        "--",
        f"{RUN_DIR}/init",
        str(fds.control),
    ]
    return argv


def _bound(bound: Bound, home_bytes: int) -> list[str]:
    if bound.home is None:
        argv = ["--perms", "0700", "--size", str(home_bytes), "--tmpfs", HOME]
    else:
        argv = ["--bind-fd", str(bound.home), HOME]
    # Always there, so code can probe it. bwrap makes the parents of each target in the
    # root tmpfs, read-only once / is (targets never lie inside one another).
    argv += ["--perms", "0755", "--dir", DATA]
    for mount, fd in bound.mounts:
        argv += ["--ro-bind-fd" if mount.read_only else "--bind-fd", str(fd), mount.target]
    return argv
