"""The bubblewrap command line for one sandbox.

Every path a sandbox sees is listed here. Host directories that hold state (the thread
home, volumes, the generated /etc) are passed as file descriptors opened by the server, so
bwrap, running as the unprivileged sandbox uid, needs no access to the server's directories.
"""

from __future__ import annotations

from dataclasses import dataclass

from baponi_core.sandbox.rootfs import HOME, SANDBOX_UID
from baponi_core.sandbox.spec import DATA, SandboxSpec

RUN_DIR = "/run/baponi"

INTERPRETERS = {
    "python": ("/usr/bin/python3", "main.py"),
    "bash": ("/bin/bash", "main.sh"),
    "node": ("/usr/bin/node", "main.js"),
}

BASE_ENV = {
    "PATH": f"{HOME}/.local/bin:{HOME}/.npm-global/bin:/usr/bin:/bin",
    "HOME": HOME,
    "USER": "baponi",
    "LOGNAME": "baponi",
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
    "TERM": "dumb",
    "PYTHONUNBUFFERED": "1",
    "NPM_CONFIG_PREFIX": f"{HOME}/.npm-global",
    "NPM_CONFIG_GLOBALCONFIG": "/etc/npmrc",
    "MPLBACKEND": "Agg",
}


@dataclass(frozen=True)
class Fds:
    """Descriptors the server opened for bwrap (numbers as seen by the child)."""

    etc: int
    code: int
    seccomp: int
    info: int
    block: int
    home: int | None
    mounts: tuple[int, ...] = ()  # one per ``spec.mounts``, in the same order


def command(bwrap: str, spec: SandboxSpec, fds: Fds, etc_binds: list[str]) -> list[str]:
    interpreter, script = INTERPRETERS[spec.language]
    limits = spec.limits
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
    if fds.home is None:
        argv += ["--perms", "0700", "--size", str(limits.home_bytes), "--tmpfs", HOME]
    else:
        argv += ["--bind-fd", str(fds.home), HOME]
    # Always there, so code can probe it. bwrap makes the parents of each target in the
    # root tmpfs, read-only once / is (the runtime refuses targets inside one another).
    argv += ["--perms", "0755", "--dir", DATA]
    for mount, fd in zip(spec.mounts, fds.mounts, strict=True):
        argv += ["--ro-bind-fd" if mount.read_only else "--bind-fd", str(fd), mount.target]
    argv += [
        "--perms",
        "0444",
        "--ro-bind-data",
        str(fds.code),
        f"{RUN_DIR}/{script}",
        "--remount-ro",
        "/",
        "--chdir",
        HOME,
        "--clearenv",
    ]
    for name, value in {**BASE_ENV, **spec.env}.items():
        argv += ["--setenv", name, value]
    argv += [
        "--seccomp",
        str(fds.seccomp),
        "--info-fd",
        str(fds.info),
        "--block-fd",
        str(fds.block),
        "--",
        interpreter,
        f"{RUN_DIR}/{script}",
    ]
    return argv
