"""Per-sandbox cgroups: memory, pids and CPU limits, an exact OOM counter, and (for the
long-lived sandboxes that pause) the freezer and the CPU and memory use their metrics show.

Both layouts are handled: cgroup v1 (one hierarchy per controller, as on this project's
CI machines) and the unified cgroup v2. Each server gets its own base directory so that
several servers on one host never touch each other's groups.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from baponi_core._sandbox import mountns
from baponi_core._sandbox.spec import Limits

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu")
V1_FREEZER = "freezer"  # a group of its own only for a sandbox that may pause
# CPU time used, on v1: in the cpu group when the two are mounted together, else a
# hierarchy of its own, where (like the freezer) only a long-lived sandbox gets a group
V1_CPUACCT = "cpuacct"
CPU_PERIOD_US = 100_000
FREEZE_WAIT_S = 2.0  # a task in uninterruptible sleep can hold a freeze up


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _counter(path: Path, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


@dataclass
class Cgroup:
    """One sandbox's groups: a directory per v1 controller, or a single v2 directory."""

    dirs: tuple[Path, ...]
    v2: bool
    freezable: bool = False  # on v1, the last of ``dirs`` is then its freezer group
    cpuacct: Path | None = None  # on v1, the group that counts its CPU time, if any

    def attach(self, pid: int) -> None:
        for d in self.dirs:
            _write(d / "cgroup.procs", str(pid))

    def oom_kills(self) -> int:
        if self.v2:
            return _counter(self.dirs[0] / "memory.events", "oom_kill")
        return _counter(self.dirs[0] / "memory.oom_control", "oom_kill")

    def cpu_used_ns(self) -> int | None:
        """The CPU time its processes have used so far (the ended ones' included), or
        None when nothing counts it (v1 without a cpuacct group for it)."""
        if self.v2:
            return _counter(self.dirs[0] / "cpu.stat", "usage_usec") * 1000
        if self.cpuacct is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            return int((self.cpuacct / "cpuacct.usage").read_text())
        return None

    def memory_used(self) -> int:
        """The memory its processes hold, in bytes: what is charged to it less the file
        cache it could drop at once (as ``docker stats`` counts it)."""
        if self.v2:
            charged = self.dirs[0] / "memory.current"
            inactive = _counter(self.dirs[0] / "memory.stat", "inactive_file")
        else:
            charged = self.dirs[0] / "memory.usage_in_bytes"
            inactive = _counter(self.dirs[0] / "memory.stat", "total_inactive_file")
        try:
            return max(0, int(charged.read_text()) - inactive)
        except (OSError, ValueError):
            return 0

    def pids(self) -> list[int]:
        with contextlib.suppress(OSError):  # every directory holds the same processes
            return [int(p) for p in (self.dirs[0] / "cgroup.procs").read_text().split()]
        return []

    def weigh(self, background: bool) -> None:
        """Its share of the CPU against other groups: the least while ``background``
        (a sandbox being prepared ahead takes only what requests leave idle), else the
        default. Its quota (``cpus``) holds either way."""
        if self.v2:
            _write(self.dirs[0] / "cpu.weight", "1" if background else "100")
        else:
            _write(self.dirs[2] / "cpu.shares", "2" if background else "1024")

    def kill(self) -> None:
        """SIGKILL every process in the group, daemonised ones included, frozen or not."""
        if self.v2:
            with contextlib.suppress(OSError):
                _write(self.dirs[0] / "cgroup.kill", "1")
                return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.freezable:  # v1 delivers a frozen task's SIGKILL only once it is thawed
            with contextlib.suppress(OSError):
                self.thaw()

    def freeze(self, wait_s: float = FREEZE_WAIT_S) -> bool:
        """Stop every process of the group where it is (nothing it does is lost); whether
        all of them are frozen within ``wait_s``. A group that is not yet frozen is still
        freezing: :meth:`thaw` undoes either."""
        if self.v2:
            _write(self.dirs[0] / "cgroup.freeze", "1")
            return self._settles(
                lambda: _counter(self.dirs[0] / "cgroup.events", "frozen") == 1, wait_s
            )
        _write(self._freezer / "freezer.state", "FROZEN")
        return self._settles(lambda: self.freezer_state() == "FROZEN", wait_s)

    def thaw(self) -> None:
        """Let the group's processes run again."""
        if self.v2:
            _write(self.dirs[0] / "cgroup.freeze", "0")
        else:
            _write(self._freezer / "freezer.state", "THAWED")

    def freezer_state(self) -> str:
        """``THAWED``, ``FREEZING`` or ``FROZEN`` (v1's words, used for v2 as well)."""
        if self.v2:
            frozen = _counter(self.dirs[0] / "cgroup.events", "frozen") == 1
            wanted = (self.dirs[0] / "cgroup.freeze").read_text().strip() == "1"
            return "FROZEN" if frozen else "FREEZING" if wanted else "THAWED"
        return (self._freezer / "freezer.state").read_text().strip()

    @property
    def _freezer(self) -> Path:
        if not self.freezable:
            raise ValueError("this sandbox's group was created without a freezer")
        return self.dirs[-1]

    @staticmethod
    def _settles(done: Callable[[], bool], wait_s: float) -> bool:
        end = time.monotonic() + wait_s
        while not done():
            if time.monotonic() >= end:
                return False
            time.sleep(0.002)
        return True

    def remove(self, deadline_s: float = 5.0) -> bool:
        """Kill what is left, wait for the group to empty, then delete it; whether it is
        gone (the kernel refuses to delete a group that still holds a process)."""
        end = time.monotonic() + deadline_s
        while self.pids() and time.monotonic() < end:
            self.kill()
            time.sleep(0.002)
        removed = True
        for d in reversed(self.dirs):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cgroup %s not removed: %s", d.name, exc.strerror)
                removed = False
        return removed


_runtimes = itertools.count()  # numbers the runtimes of this process


class Cgroups:
    """Creates and removes the groups of one server."""

    def __init__(
        self,
        bases: tuple[Path, ...],
        v2: bool,
        freezer: Path | None = None,
        cpuacct: Path | None = None,
    ) -> None:
        self.bases, self.v2 = bases, v2
        self.freezer = freezer  # v1's freezer base, when the hierarchy is mounted
        self.cpuacct = cpuacct  # v1's cpuacct base, when mounted apart from cpu

    @classmethod
    def detect(cls, root: Path = ROOT) -> Cgroups | None:
        """The server's cgroups, or ``None`` when this process may not create them."""
        if os.geteuid() != 0:
            return None
        server = f"srv-{os.getpid()}-{next(_runtimes)}"  # a process may run several
        try:
            if all((root / c / "cgroup.procs").exists() for c in V1_CONTROLLERS):
                _favor_dynmods()
                bases = tuple(root / c / "baponi" / server for c in V1_CONTROLLERS)
                freezer: Path | None = root / V1_FREEZER / "baponi" / server
                if not (root / V1_FREEZER / "cgroup.procs").exists():
                    freezer = None
                cpuacct: Path | None = root / V1_CPUACCT / "baponi" / server
                apart = not (root / "cpu" / "cpuacct.usage").exists()
                if not (apart and (root / V1_CPUACCT / "cgroup.procs").exists()):
                    cpuacct = None
                # The freezer first: a dead server's frozen processes die only once thawed.
                extra = [cpuacct] if cpuacct else []
                for base in (*([freezer] if freezer else []), *bases, *extra):
                    _clean_stale(base.parent)
                    base.mkdir(parents=True, exist_ok=True)
                return cls(bases, v2=False, freezer=freezer, cpuacct=cpuacct)
            if (root / "cgroup.controllers").exists():
                return cls((_v2_base(root, server),), v2=True)
        except OSError as exc:
            log.warning("cgroups unavailable (%s); falling back to rlimits", exc)
        return None

    @property
    def can_freeze(self) -> bool:
        return self.v2 or self.freezer is not None

    def create(self, name: str, limits: Limits, freezable: bool = False) -> Cgroup:
        """The groups of sandbox ``name``; with a freezer when ``freezable`` (v1 gives
        it a group of its own, which one-shot sandboxes need not pay for)."""
        if freezable and not self.can_freeze:
            raise OSError(errno.ENOTSUP, "the cgroup freezer is not mounted")
        dirs = tuple(base / name for base in self.bases)
        # v1 counts CPU time in the cpu group when cpuacct is mounted with it (when it is
        # not mounted at all, the reader finds no counter there and says so)
        cpuacct = None if self.v2 else dirs[2]
        if self.cpuacct is not None:
            cpuacct = self.cpuacct / name if freezable else None
            dirs += (cpuacct,) if cpuacct else ()
        if freezable and self.freezer:
            dirs += (self.freezer / name,)  # the last, as Cgroup expects
        for d in dirs:
            d.mkdir()
        group = Cgroup(dirs, self.v2, freezable, cpuacct)
        try:
            self._limit(group, limits)
        except OSError:
            group.remove()
            raise
        return group

    def _limit(self, group: Cgroup, limits: Limits) -> None:
        quota = max(1000, int(limits.cpus * CPU_PERIOD_US))
        if self.v2:
            d = group.dirs[0]
            _write(d / "memory.max", str(limits.memory_bytes))
            with contextlib.suppress(FileNotFoundError):
                _write(d / "memory.swap.max", "0")
            _write(d / "memory.oom.group", "1")
            _write(d / "pids.max", str(limits.pids))
            _write(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            return
        memory, pids, cpu = group.dirs[:3]
        _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
        with contextlib.suppress(FileNotFoundError):  # only present when swap is accounted
            _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        _write(pids / "pids.max", str(limits.pids))
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(quota))

    def close(self) -> None:
        bases = [(base, False) for base in self.bases]
        if self.cpuacct is not None:
            bases.append((self.cpuacct, False))
        if self.freezer is not None:  # first: a frozen process dies only once thawed
            bases.insert(0, (self.freezer, True))
        for base, freezer in bases:
            for child in base.iterdir() if base.exists() else ():
                if child.is_dir():
                    Cgroup((child,), self.v2, freezable=freezer).remove()
            with contextlib.suppress(OSError):
                base.rmdir()


def _favor_dynmods() -> None:
    """Make moving a process between cgroups cheap (0.1 ms instead of ~10 ms).

    Without ``favordynmods`` every write to ``cgroup.procs`` waits for an RCU grace
    period. Mounting any v1 hierarchy with the option switches the kernel-wide mode
    for good, so a throwaway named hierarchy is mounted and unmounted once.
    """
    with tempfile.TemporaryDirectory(prefix="baponi-cgroup-") as where:
        try:
            mountns.mount("cgroup", Path(where), "cgroup", 0, "none,name=baponi,favordynmods")
        except OSError as exc:
            log.info("favordynmods not enabled: %s", exc)
            return
        mountns.unmount(Path(where))


def _clean_stale(parent: Path) -> None:
    """Remove the groups of servers that died without cleaning up."""
    if not parent.exists():
        return
    for base in parent.glob("srv-*"):
        pid = base.name.removeprefix("srv-").partition("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            if parent.parent.name == V1_FREEZER:
                Cgroups((), v2=False, freezer=base).close()
            else:
                Cgroups((base,), v2=False).close()


def _v2_base(root: Path, server: str) -> Path:
    """A delegated v2 subtree; the server moves into a leaf so the parent can hand out
    controllers (v2 forbids processes in a group whose children have controllers)."""
    own = Path(Path("/proc/self/cgroup").read_text().strip().split("::", 1)[1].lstrip("/"))
    parent = root / own
    wanted = "+memory +pids +cpu"
    try:
        _write(parent / "cgroup.subtree_control", wanted)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        leaf = parent / f"baponi-srv-{os.getpid()}-self"  # the process's, whatever the runtime
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cgroup.procs", "0")
        _write(parent / "cgroup.subtree_control", wanted)
    base = parent / f"baponi-{server}"
    base.mkdir(exist_ok=True)
    _write(base / "cgroup.subtree_control", wanted)
    return base
