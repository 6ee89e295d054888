"""Host uids for sandboxes: every live sandbox runs as a uid of its own, from a range.

The kernel counts some limits per uid across every namespace (inotify instances,
``RLIMIT_NPROC``, ``RLIMIT_SIGPENDING``, ``RLIMIT_MSGQUEUE``), so sandboxes that shared
one uid could starve each other. Each uid is also the sandbox's gid.

A uid is *claimed* host-wide while it is in use: an exclusive ``flock`` on a file of
its own in a root-only directory, so two servers given overlapping ranges never hand
out the same uid either. The lock goes with the server's process, should it die. A uid
is given back only once everything of the sandbox that had it is gone (processes,
cgroup, mounts): the caller says when.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from baponi_core._sandbox import idmap
from baponi_core._sandbox.rootfs import STORAGE_UID

# One lock file per uid in use, host-wide: not below /run/baponi, which is private to
# each server (mountns).
CLAIMS = Path("/run/baponi-uids")
OVERFLOW_UID = 65534  # what the kernel shows for unmapped ids ("nobody")
LAST_UID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the set*id calls


@dataclass(frozen=True)
class UidRange:
    """The host uids ``first``..``last`` (both included)."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.last <= LAST_UID:
            raise ValueError(f"not a range of uids between 1 and {LAST_UID}: {self}")
        for taken, what in ((STORAGE_UID, "the owner of stored files"), (OVERFLOW_UID, "nobody")):
            if taken in self:
                raise ValueError(f"the sandbox uids must not include {taken} ({what})")

    @classmethod
    def parse(cls, text: str) -> UidRange:
        """``FIRST-LAST``, e.g. ``100000-165535``."""
        first, sep, last = text.partition("-")
        if not (sep and first.isascii() and first.isdigit() and last.isascii() and last.isdigit()):
            raise ValueError(f"expected FIRST-LAST, got {text!r}")
        return cls(int(first), int(last))

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.first <= uid <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    def host_conflicts(self, etc: Path = Path("/etc")) -> list[str]:
        """Host accounts and subordinate id ranges (rootless containers) that use ids of
        this range: their processes would share the sandboxes' limits, and could signal
        them."""
        found = []
        for name in ("passwd", "group"):
            for line in _lines(etc / name):
                fields = line.split(":")
                if len(fields) > 2 and fields[2].isdigit() and int(fields[2]) in self:
                    found.append(f"{name} entry {fields[0]} ({fields[2]})")
        for name in ("subuid", "subgid"):
            for line in _lines(etc / name):
                fields = line.split(":")
                if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                    start, count = int(fields[1]), int(fields[2])
                    if start <= self.last and self.first < start + count:
                        found.append(f"{name} range of {fields[0]} ({start}+{count})")
        return found


DEFAULT_UIDS = UidRange(100_000, 165_535)


def running_as(uid: int, within_s: float = 1.0) -> bool:
    """Whether a process of real uid ``uid`` still runs after ``within_s``: the check for
    a sandbox whose init was never known (its set-up failed), so that nothing proves its
    pid namespace is gone. Each process's status says its real uid (the owner of
    its ``/proc`` files is root when it is not dumpable, as a sandbox's init is)."""
    deadline = time.monotonic() + within_s
    while True:
        if not any(_real_uid(entry) == uid for entry in os.scandir("/proc")):
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.01)


def _real_uid(entry: os.DirEntry[str]) -> int | None:
    if not entry.name.isdigit():
        return None
    try:
        with open(f"{entry.path}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):  # it ended while we looked
        pass
    return None


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


_CLAIM_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class Uids:
    """Hands out the uids of one range, lowest free first, to one server's sandboxes.
    Thread-safe. Root only."""

    def __init__(self, uids: UidRange, claims: Path = CLAIMS) -> None:
        self.range = uids
        self._claims = claims
        claims.mkdir(mode=0o700, parents=True, exist_ok=True)
        claims.chmod(0o700)
        self._held: dict[int, int] = {}  # uid -> its claim's descriptor
        self._maps: dict[int, int] = {}  # uid -> a user namespace mapping STORAGE_UID to it
        self._lock = threading.Lock()

    def take(self) -> int:
        """A uid no live sandbox of any server has; raises OSError when none is free."""
        with self._lock:
            for uid in range(self.range.first, self.range.last + 1):
                if uid not in self._held and self._claim(uid):
                    return uid
        raise OSError(f"no sandbox uid of {self.range} is free")

    def _claim(self, uid: int) -> bool:
        fd = os.open(self._claims / str(uid), _CLAIM_FLAGS, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another server's sandbox has it
            os.close(fd)
            return False
        self._held[uid] = fd
        return True

    def give(self, uid: int) -> None:
        """``uid`` may go to another sandbox: nothing of the one that had it is left."""
        with self._lock:
            os.close(self._held.pop(uid))  # closing the last descriptor drops the lock

    def mapped(self, uid: int) -> bool:
        """Whether :meth:`idmap` of ``uid`` is at hand (made already)."""
        with self._lock:
            return uid in self._maps

    def idmap(self, uid: int) -> int:
        """A user namespace (descriptor) that maps the owner of stored files to ``uid``:
        made on the first use of ``uid``, then kept (it holds no process)."""
        with self._lock:
            fd = self._maps.get(uid)
        if fd is None:
            made = idmap.userns(STORAGE_UID, uid)
            with self._lock:
                fd = self._maps.setdefault(uid, made)
            if fd != made:  # another thread made one meanwhile
                os.close(made)
        return fd

    def close(self) -> None:
        with self._lock:
            for fd in (*self._held.values(), *self._maps.values()):
                os.close(fd)
            self._held.clear()
            self._maps.clear()
