"""Run one sandbox: launch bwrap, confine it, collect its output, decide how it ended.

The launch is split in two by bwrap's ``--block-fd``: the sandbox is fully set up
(namespaces, mounts) and then waits while the server moves its init process into the
cgroups, so no user code ever runs unconfined. That pause is also
where a pre-started pool or an egress proxy bound inside the sandbox's network
namespace will hook in.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from baponi_core.sandbox import bwrap, mountns, seccomp
from baponi_core.sandbox.cgroups import Cgroup, Cgroups
from baponi_core.sandbox.libc import call
from baponi_core.sandbox.rootfs import build_etc
from baponi_core.sandbox.spawner import Spawner
from baponi_core.sandbox.spec import Ending, Limits, Mount, Outcome, SandboxSpec

log = logging.getLogger(__name__)

SETUP_TIMEOUT_S = 10.0
SIGSYS_STATUS = 128 + signal.SIGSYS
READ_CHUNK = 65536
PR_SET_CHILD_SUBREAPER = 36


OutputSink = Callable[[str, bytes], None]  # (stream name, bytes): called as output arrives


class SandboxError(Exception):
    """The sandbox could not be set up: a platform fault, never the user's code."""


class MountError(SandboxError):
    """A mount's directory is missing, or is not a plain directory: a symlink (planted by
    sandboxed code) on the way is never followed. The message names the sandbox path only.
    """


@dataclass
class _Stream:
    name: str
    fd: int
    cap: int
    data: bytearray = field(default_factory=bytearray)


@dataclass
class _Run:
    proc: subprocess.Popen[bytes]
    exit_pidfd: int  # readable once bwrap has exited
    init_pidfd: int | None = None
    group: Cgroup | None = None
    timed_out: bool = False
    overflowed: bool = False
    stopped: bool = False

    def kill(self) -> None:
        """Kill the sandbox's init; the kernel then kills everything in its pid namespace."""
        if self.init_pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.init_pidfd, signal.SIGKILL)
        if self.group is not None:
            self.group.kill()
        if self.init_pidfd is None:
            self.proc.kill()


class SandboxRuntime:
    """Runs sandboxes for one server. Create with :meth:`start`, end with :meth:`close`."""

    def __init__(
        self,
        workdir: Path,
        *,
        uid: int | None,
        bwrap_path: str,
        cgroups: Cgroups | None,
        exposed: dict[Path, Path],
    ) -> None:
        self.workdir = workdir
        self.uid = uid
        self.bwrap_path = bwrap_path
        self.cgroups = cgroups
        self._exposed = exposed
        self._etc = workdir / "etc"
        self._etc_binds = build_etc(self._etc)
        self._seccomp = seccomp.program()
        self._spawner = Spawner(uid)

    @classmethod
    def start(
        cls,
        workdir: Path,
        shared: Iterable[Path],
        *,
        uid: int | None = 64000,
        bwrap_path: str | None = None,
    ) -> SandboxRuntime:
        """A runtime keeping its files in ``workdir``. ``shared`` are the host directories
        whose contents sandboxes may get (thread homes, volumes, caches): every home or
        mount source must lie under one of them. They are made traversable, not listable.
        """
        found = bwrap_path or shutil.which("bwrap")
        if found is None:
            raise SandboxError("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
        # Named by position: /run/baponi/run is the workdir, /run/baponi/1-volumes a share.
        named = {f"{i}-{d.name}"[:64]: d for i, d in enumerate(shared, 1)}
        # bwrap exits as soon as its pid-namespace init reports the exit code, orphaning that
        # init: without this it is reparented to the host's pid 1 and lingers as a zombie
        # (forever when the server itself is pid 1 in a container). We reap it in _reap.
        _set_child_subreaper()
        # Traversable but not listable: the sandbox uid must reach the directories bwrap binds.
        for d in (workdir, *named.values()):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o711)
        if os.geteuid() != 0:  # sandboxes run as ourselves: our directories are reachable
            return cls(workdir, uid=None, bwrap_path=found, cgroups=None, exposed={})
        exposed = mountns.expose({"run": workdir, **named})
        return cls(workdir, uid=uid, bwrap_path=found, cgroups=Cgroups.detect(), exposed=exposed)

    def _open_mount(self, mount: Mount) -> int:
        """An O_PATH descriptor of the mount's directory, walked down one name at a time."""
        source = self._visible(mount.source)
        if self._exposed and source == mount.source:
            raise MountError(f"cannot mount {mount.target}: its source is not shared")
        try:
            fd = _open_dir(source)
        except OSError as exc:
            raise MountError(f"cannot mount {mount.target}: {_why(exc)}") from None
        try:
            for name in mount.names:
                below = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = below
        except OSError as exc:
            os.close(fd)
            raise MountError(f"cannot mount {mount.target}: {_why(exc)}") from None
        return fd

    def _visible(self, path: Path) -> Path:
        """``path`` as bwrap, running as the sandbox uid, can reach it."""
        for source, target in self._exposed.items():
            if path.is_relative_to(source):
                return target / path.relative_to(source)
        return path

    def close(self) -> None:
        self._spawner.close()
        if self.cgroups is not None:
            self.cgroups.close()

    async def run(
        self,
        spec: SandboxSpec,
        *,
        on_output: OutputSink | None = None,
        stop: anyio.Event | None = None,
    ) -> Outcome:
        """Run ``spec`` to its end, passing output to ``on_output`` as it is written.
        Setting ``stop`` kills the sandbox (ending ``STOPPED``); so does cancelling the caller.
        """
        started = time.monotonic()
        fds: list[int] = []
        run: _Run | None = None
        try:
            run, info_r, block_w, streams = await self._launch(spec, fds)
            try:
                await self._confine(run, spec, info_r, block_w)
            except SandboxError:
                log.error("bwrap set-up failed: %s", _available(streams[1].fd))
                raise
            async with anyio.create_task_group() as watch:
                if stop is not None:
                    watch.start_soon(_stop_on, stop, run)
                await self._supervise(run, spec, streams, started, on_output)
                watch.cancel_scope.cancel()
            return self._outcome(run, streams, started)
        finally:
            if run is not None:
                with anyio.CancelScope(shield=True):
                    await self._reap(run)
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def _launch(
        self, spec: SandboxSpec, fds: list[int]
    ) -> tuple[_Run, int, int, tuple[_Stream, _Stream]]:
        def keep(fd: int) -> int:
            fds.append(fd)
            return fd

        child_fds = [
            keep(_memfd("code", spec.code)),
            keep(_memfd("seccomp", self._seccomp)),
            keep(os.open(self._visible(self._etc), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)),
        ]
        home = None
        if spec.home.path is not None:
            home = keep(_open_dir(self._visible(spec.home.path)))
            child_fds.append(home)
        _check_targets(spec.mounts)
        mounts = tuple(keep(self._open_mount(mount)) for mount in spec.mounts)
        child_fds += mounts
        info_r, info_w = (keep(fd) for fd in os.pipe2(os.O_CLOEXEC))
        block_r, block_w = (keep(fd) for fd in os.pipe2(os.O_CLOEXEC))
        out_r, out_w = (keep(fd) for fd in os.pipe2(os.O_CLOEXEC))
        err_r, err_w = (keep(fd) for fd in os.pipe2(os.O_CLOEXEC))
        child_fds += [info_w, block_r]
        argv = bwrap.command(
            self.bwrap_path,
            spec,
            bwrap.Fds(
                etc=child_fds[2],
                code=child_fds[0],
                seccomp=child_fds[1],
                info=info_w,
                block=block_r,
                home=home,
                mounts=mounts,
            ),
            self._etc_binds,
        )
        group = self.cgroups.create(spec.name, spec.limits) if self.cgroups else None
        try:
            proc = await self._spawner.call(_popen, argv, out_w, err_w, child_fds)
        except OSError as exc:
            if group is not None:
                group.remove()
            raise SandboxError(f"could not start bwrap: {exc}") from exc
        for fd in (*child_fds, out_w, err_w):
            fds.remove(fd)
            os.close(fd)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        os.set_blocking(info_r, False)
        cap = spec.limits.output_bytes
        streams = (_Stream("stdout", out_r, cap), _Stream("stderr", err_r, cap))
        return _Run(proc, keep(os.pidfd_open(proc.pid)), group=group), info_r, block_w, streams

    async def _confine(self, run: _Run, spec: SandboxSpec, info_r: int, block_w: int) -> None:
        """Wait for bwrap's set-up, confine its init, then let it run the code."""
        info = None
        with anyio.move_on_after(SETUP_TIMEOUT_S):
            info = await _read_info(info_r)
        if info is None:
            raise SandboxError("sandbox set-up failed")
        pid = int(info["child-pid"])
        run.init_pidfd = os.pidfd_open(pid)
        if run.group is not None:
            run.group.attach(pid)
        await self._spawner.call(_set_rlimits, pid, spec.limits, run.group is None)
        try:
            os.write(block_w, b"1")
        except BrokenPipeError:
            raise SandboxError("sandbox set-up failed") from None

    async def _supervise(
        self,
        run: _Run,
        spec: SandboxSpec,
        streams: tuple[_Stream, _Stream],
        started: float,
        on_output: OutputSink | None,
    ) -> None:
        remaining = spec.limits.timeout_s - (time.monotonic() - started)
        with anyio.move_on_after(max(remaining, 0)) as scope:
            async with anyio.create_task_group() as tg:
                for stream in streams:
                    tg.start_soon(self._pump, run, stream, on_output)
                await anyio.wait_readable(run.exit_pidfd)
        if scope.cancelled_caught:
            run.timed_out = True
            run.kill()
            with anyio.move_on_after(SETUP_TIMEOUT_S):
                await anyio.wait_readable(run.exit_pidfd)

    async def _pump(self, run: _Run, stream: _Stream, on_output: OutputSink | None) -> None:
        while True:
            await anyio.wait_readable(stream.fd)
            try:
                chunk = os.read(stream.fd, READ_CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                return
            room = stream.cap - len(stream.data)
            kept = chunk[:room]
            stream.data += kept
            if on_output is not None and kept:
                on_output(stream.name, kept)
            if len(chunk) > room:
                run.overflowed = True
                run.kill()
                return

    def _outcome(self, run: _Run, streams: tuple[_Stream, _Stream], started: float) -> Outcome:
        code = run.proc.wait()
        if code == 1 and streams[1].data.startswith(b"bwrap: "):  # failed before exec
            raise SandboxError(streams[1].data.decode(errors="replace").strip())
        if run.stopped:
            ending = Ending.STOPPED
        elif run.group is not None and run.group.oom_kills() > 0:
            ending = Ending.OOM
        elif run.timed_out:
            ending = Ending.TIMEOUT
        elif run.overflowed:
            ending = Ending.OUTPUT_LIMIT
        elif code == SIGSYS_STATUS:
            ending = Ending.SECCOMP
        else:
            ending = Ending.EXITED
        return Outcome(
            ending=ending,
            exit_code=code,
            stdout=bytes(streams[0].data),
            stderr=bytes(streams[1].data),
            duration_ms=int((time.monotonic() - started) * 1000),
        )

    async def _reap(self, run: _Run) -> None:
        if run.proc.poll() is None:
            run.kill()
            with anyio.move_on_after(SETUP_TIMEOUT_S):
                await anyio.wait_readable(run.exit_pidfd)
            run.proc.poll()
        if run.init_pidfd is not None:
            with anyio.move_on_after(5):
                await anyio.wait_readable(run.init_pidfd)  # readable once the init has exited
            with contextlib.suppress(ChildProcessError):  # not ours if we are no subreaper
                os.waitid(os.P_PIDFD, run.init_pidfd, os.WEXITED | os.WNOHANG)  # noqa: ASYNC222 (WNOHANG)
            os.close(run.init_pidfd)
        if run.group is not None:
            if run.group.pids():
                await anyio.to_thread.run_sync(run.group.remove)
            else:
                run.group.remove()


async def _stop_on(stop: anyio.Event, run: _Run) -> None:
    await stop.wait()
    run.stopped = True
    run.kill()


async def _read_info(fd: int) -> dict[str, int] | None:
    """bwrap's ``--info-fd`` JSON; ``None`` if bwrap failed before writing it."""
    data = b""
    while True:
        await anyio.wait_readable(fd)
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            continue
        if not chunk:
            return None
        data += chunk
        with contextlib.suppress(ValueError):
            info = json.loads(data)
            if isinstance(info, dict) and "child-pid" in info:
                return info


def _available(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.read(fd, READ_CHUNK).decode(errors="replace").strip()
    return ""


def _set_child_subreaper() -> None:
    """Adopt orphaned descendants (bwrap's namespace init) so that we can reap them."""
    try:
        call("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0, what="PR_SET_CHILD_SUBREAPER")
    except OSError as exc:
        log.warning("%s", exc)


def _popen(
    argv: list[str], stdout: int, stderr: int, pass_fds: list[int]
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, env={}, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, pass_fds=pass_fds
    )


def _set_rlimits(pid: int, limits: Limits, memory: bool) -> None:
    """Lower the hard limits of the sandbox's init before it runs anything; they are
    inherited by everything it starts and can never be raised again."""
    wanted = [
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_CPU, int(limits.timeout_s) + 5),  # a backstop; the wall clock rules
    ]
    if memory:  # no cgroup: RLIMIT_DATA, not RLIMIT_AS, which V8 cannot start under
        wanted.append((resource.RLIMIT_DATA, limits.memory_bytes))
    for which, value in wanted:
        resource.prlimit(pid, which, (value, value))


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(f"baponi-{name}", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(path: Path) -> int:
    """Open a home directory without following a symlink planted in its place."""
    return os.open(path, _DIR_FLAGS)


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such directory"
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        return "not a directory (symbolic links are not followed)"
    return exc.strerror or "cannot open"


def _check_targets(mounts: tuple[Mount, ...]) -> None:
    """No mount at or inside another one: bwrap would create the inner target inside the
    host directory bound at the outer one."""
    targets = [f"{m.target}/" for m in mounts]
    for i, one in enumerate(targets):
        for other in targets[i + 1 :]:
            if one.startswith(other) or other.startswith(one):
                raise SandboxError(f"mounts {one[:-1]} and {other[:-1]} overlap")
