"""The bubblewrap command line of one sandbox: everything that does not depend on a request.

Every path a sandbox sees is listed here. Host directories that hold state reach it as
file descriptors the server opened, or through its slot (:mod:`slots`), so bwrap, running
as the unprivileged sandbox uid, needs no access to the server's directories. Its init is
the agent (:mod:`agent`), as pid 1; processes are started later, through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from baponi_core._sandbox import egress, procfs
from baponi_core._sandbox.rootfs import HIDING, HOME, SANDBOX_UID
from baponi_core._sandbox.slots import Slot
from baponi_core._sandbox.spec import DATA, RUN_DIR, SECRETS_DIR, Mount, Shape

DATA_TMPFS_BYTES = 1 << 20  # /data on an image runtime: room for mount points only


@dataclass(frozen=True)
class Fds:
    """Descriptors the server opened for bwrap (numbers as seen by the child)."""

    etc: int  # the generated /etc
    seccomp: int
    info: int
    control: int  # the agent's end of its socket


@dataclass(frozen=True)
class ImageRoot:
    """An image runtime's root, where bwrap (as the sandbox's uid) can reach it, and the
    generated /etc whose :data:`HIDING` files are bound over the image's."""

    root: str
    etc: str


@dataclass(frozen=True)
class Bound:
    """The home and volumes bound by bwrap as it launches the sandbox, for one launched
    when its request is known. Sources are paths, or descriptors (``by_fd``); ``home``
    None is a fresh tmpfs."""

    home: str | None
    mounts: tuple[tuple[Mount, str], ...] = ()
    by_fd: bool = False

    @property
    def fds(self) -> list[int]:
        """The descriptors bwrap must inherit."""
        if not self.by_fd:
            return []
        return [int(fd) for fd in (self.home, *(source for _, source in self.mounts)) if fd]


def command(
    bwrap: str,
    shape: Shape,
    fds: Fds,
    etc_binds: list[str],
    slot: Slot,
    bound: Bound | None,
    memory_rlimit: bool,
    image: ImageRoot | None = None,
) -> list[str]:
    """``bound`` None: /home/baponi and /data are the slot's, for mounts made later (into
    the running sandbox, by propagation). ``image`` None: the host runtime.
    ``memory_rlimit``: bound memory with RLIMIT_DATA (when there is no cgroup to)."""
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
    ]
    argv += _root(image, fds, etc_binds)
    argv += ["--proc", "/proc", *procfs.masks()]
    argv += [
        # bwrap's /dev is a tmpfs of its own, unbounded and the sandbox user's: read-only
        # once made, with /dev/shm (POSIX shared memory) a size-capped tmpfs of its own.
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--size",
        str(limits.shm_bytes),
        "--tmpfs",
        "/dev/shm",
        "--remount-ro",
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
        argv += _bound(bound, limits.home_bytes, image=image is not None)
    argv += [
        "--ro-bind",
        str(slot.run),
        RUN_DIR,
        "--ro-bind",
        str(slot.secrets),
        SECRETS_DIR,
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
        # The limits the init lowers for every process of the sandbox: no core dumps,
        # file size, open files, and (not V8-proof RLIMIT_AS) data as memory's stand-in.
        "0",
        str(limits.file_size_bytes),
        str(limits.open_files),
        str(limits.memory_bytes if memory_rlimit else 0),
    ]
    if egress.forwards(shape.network):  # the init relays its loopback port to the proxy
        argv.append(egress.socket_path())
    return argv


def _root(image: ImageRoot | None, fds: Fds, etc_binds: list[str]) -> list[str]:
    """The read-only root: an image's own (its mount points made at import), or the host's
    /usr with /usr/local hidden in bwrap's root tmpfs."""
    if image is not None:
        argv = ["--ro-bind", image.root, "/"]
        for name in HIDING:  # the image's /etc, but for who and where we are
            argv += ["--ro-bind", f"{image.etc}/{name}", f"/etc/{name}"]
        return argv
    argv = [
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
    return argv


def _bound(bound: Bound, home_bytes: int, image: bool) -> list[str]:
    by = "-fd" if bound.by_fd else ""
    if bound.home is None:
        argv = ["--perms", "0700", "--size", str(home_bytes), "--tmpfs", HOME]
    else:
        argv = [f"--bind{by}", bound.home, HOME]
    # Always there, so code can probe it. bwrap makes the parents of each target in the
    # root tmpfs, read-only once / is (targets never lie inside one another). An image's
    # root is read-only from the start: /data is a small tmpfs of its own there, made
    # read-only once the targets are in it.
    if image:
        argv += ["--perms", "0755", "--size", str(DATA_TMPFS_BYTES), "--tmpfs", DATA]
    else:
        argv += ["--perms", "0755", "--dir", DATA]
    for mount, source in bound.mounts:
        argv += [f"--ro-bind{by}" if mount.read_only else f"--bind{by}", source, mount.target]
    if image:
        argv += ["--remount-ro", DATA]
    return argv
