"""The sandbox handle: one sandbox, set up before any request, running processes until it
is closed.

Contract::

    sandbox = await runtime.prepare(shape)   # namespaces, root filesystem, seccomp,
                                             # cgroup and rlimits, all done; its init
                                             # (the agent) waits, and nothing else runs
    await sandbox.attach(home, mounts)       # the request's mounts, once, before any
                                             # process: a thread home (None: a fresh
                                             # tmpfs) and volumes under /data (only the
                                             # server's own start(..., early=True),
                                             # a warm interpreter, may come before)
    process = await sandbox.start(command)   # any number, one after another or at once,
    await process.wait()                     # each with its own stdin, stdout, stderr
    sandbox.kill()                           # ends every process of the sandbox at once
    await sandbox.close()                    # always: kills, waits until no process of
                                             # it runs, frees the cgroup, the mounts, the
                                             # slot and its host uid (wait=False: in the
                                             # background)

A sandbox is never given back: whoever prepared it closes it, and no state of one user
can reach another. Processes are killed with the sandbox; a process's own end is
reported by :meth:`Process.wait`, as a shell reports it (the exit code, or 128 + the
signal), and exactly by :attr:`Process.signal_number` (the signal that ended it, from
the wait status the init reports; None: it exited, whatever its code). Set-up faults
raise :class:`SandboxError`; a mount that cannot be made raises :class:`MountError`,
secrets that cannot be written :class:`SecretsError`; none is ever the fault of code run
in the sandbox.

As root each sandbox runs as a host uid of its own (:mod:`uids`), taken at prepare and
given back once nothing of it is left; its home and volumes are id-mapped to that uid.
As root the server prepares the whole sandbox ahead and mounts the request's home and
volumes into it at :meth:`Sandbox.attach` (:mod:`attach`). ``prepare(shape, ahead=False)``
leaves the launch to ``attach`` instead, with the mounts bound as bwrap sets it up: for a
caller that has its request already. A server that is not root cannot mount, so there
the sandbox is always launched at ``attach``, with its mounts on bwrap's command line;
everything else behaves the same.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import select
import signal
import socket
import subprocess
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from baponi_core._net.egress import Egress, Tap
from baponi_core._sandbox import agent, attach, bwrap, egress, uids
from baponi_core._sandbox.agent import AgentError, Kind
from baponi_core._sandbox.cgroups import Cgroup, Cgroups
from baponi_core._sandbox.gate import Gate
from baponi_core._sandbox.image import Hold
from baponi_core._sandbox.pipes import PipeReader, PipeWriter
from baponi_core._sandbox.rootfs import HOME
from baponi_core._sandbox.roots import Roots
from baponi_core._sandbox.slots import Slot, Slots
from baponi_core._sandbox.spec import Command, Mount, Shape
from baponi_core._sandbox.uids import Uids
from baponi_core._sandbox.workers import Spawner, Worker

log = logging.getLogger(__name__)

SETUP_TIMEOUT_S = 10.0
KILLED = 128 + signal.SIGKILL  # the status of a process that went with its sandbox
INIT_EXIT_S = 5  # how long the init's exit is waited for, its namespace emptied first


class SandboxError(Exception):
    """The sandbox could not be set up or used: a platform fault, never the user's code."""


class SecretsError(SandboxError):
    """A command's secrets (connector files) could not be written into the sandbox: a
    path that is not plain, one given twice, or no room. Names paths only, never data."""


class MountError(SandboxError):
    """A mount's directory is missing, or is not a plain directory: a symlink (planted by
    sandboxed code) on the way is never followed. The message names the sandbox path only.
    """


@dataclass(frozen=True)
class Host:
    """What every sandbox of one runtime is made with."""

    bwrap: str
    uids: Uids | None  # the host uids sandboxes run as, one each; None: the server's own
    cgroups: Cgroups | None
    gate: Path | None  # bwrap is started through it when there are cgroups (:mod:`gate`)
    spawner: Spawner  # starts bwrap, as the sandbox's uid
    janitor: Worker  # frees what ended sandboxes held
    etc: Path
    etc_binds: list[str]
    roots: Roots | None  # image roots mounted where bwrap reaches them; None: not root
    seccomp: bytes
    slots: Slots
    shared: tuple[Path, ...]  # the host directories mounts may come from
    tasks: TaskGroup  # where each sandbox's agent is listened to
    egress: Egress = field(default_factory=Egress)  # the proxy of sandboxes let out
    live: set[Sandbox] = field(default_factory=set)  # prepared and not yet closed

    @property
    def root(self) -> bool:
        """Whether the server is root: it can then mount, into a sandbox already running
        or into a slot before bwrap binds it."""
        return self.uids is not None


class Process:
    """One process started in a sandbox. Its pipes are the caller's to read and close."""

    def __init__(
        self,
        sandbox: Sandbox,
        id: int,
        stdin: PipeWriter | None,
        stdout: PipeReader,
        stderr: PipeReader,
    ) -> None:
        self.id = id
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.pid: int | None = None  # inside the sandbox
        self.host_pid: int | None = None  # on the host, once asked for (Sandbox.host_pid)
        self.status: int | None = None
        self.signal_number: int | None = None  # the signal that ended it; None: it exited
        self._sandbox = sandbox
        self._error: int | None = None  # errno of a failed start
        self._started = anyio.Event()
        self._done = anyio.Event()

    async def wait(self) -> int:
        """Its status once it has ended: the exit code, or 128 + the signal that ended it."""
        await self._done.wait()
        assert self.status is not None
        return self.status

    async def signal(self, signo: int, group: bool = True) -> None:
        """Send ``signo`` to it (``group``: to its process group, what it started too)."""
        if not self._done.is_set():
            await self._sandbox._send(agent.signal(self.id, signo, group), ())

    def close(self) -> None:
        for pipe in (self.stdin, self.stdout, self.stderr):
            if pipe is not None:
                pipe.close()

    def _ended(self, status: int, signo: int | None) -> None:
        self.status, self.signal_number = status, signo
        self._started.set()
        self._done.set()


class Sandbox:
    """A sandbox of one ``shape``; made by :meth:`SandboxRuntime.prepare`."""

    def __init__(
        self,
        host: Host,
        id: str,
        shape: Shape,
        slot: Slot,
        uid: int | None,
        hold: Hold,
        *,
        background: bool = False,
    ) -> None:
        self.id = id
        self.shape = shape
        self.uid = uid  # its own host uid, until it is freed; None: the server's
        self._host = host
        self._slot = slot
        self._hold = hold  # on its runtime's generation, until it is freed
        self._rooted = False  # its image root is mounted for it (Roots)
        self._bwrap: subprocess.Popen[bytes] | None = None
        self._exit_pidfd: int | None = None  # readable once bwrap has exited
        self._init_pidfd: int | None = None  # the agent, pid 1 of the sandbox
        self._group: Cgroup | None = None
        self._tap: Tap | None = None  # its egress proxy's listener, if its policy lets it out
        self._control: socket.socket | None = None
        self._setup_errors: int | None = None  # bwrap's stderr
        self._ready = anyio.Event()
        self._gone = anyio.Event()  # the agent has ended: so has every process
        self._processes: dict[int, Process] = {}
        self._ids = itertools.count(1)
        self._mounted: list[Path] = []
        self._listening = False
        self._attached = False
        self._closed = False
        self._background = background  # at the least CPU share until foreground()
        self._freed = anyio.Event()  # all it held has been given back

    # set-up

    async def _launch(self, bound: bwrap.Bound | None, ready: bool) -> None:
        """Start bwrap in the sandbox's cgroups: held at the gate until it is in them, so
        that its init, and all it starts, are born there, and the cgroup namespace is
        rooted there. ``ready``: also wait until the init says it is up; otherwise what is
        sent to it waits in its socket, and a failed set-up shows as its end."""
        host = self._host
        own: list[int] = []  # closed here once bwrap has its copies
        gate: Gate | None = None
        info_r = -1
        try:
            if egress.forwards(self.shape.network):
                try:
                    self._tap = await host.egress.tap(
                        self._slot.run / egress.SOCKET, self.uid, self.shape.network
                    )
                except OSError as exc:
                    raise SandboxError(f"could not open the egress proxy: {exc}") from exc
            etc = os.open(host.etc, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            own.append(etc)
            seccomp = _memfd("seccomp", host.seccomp)
            own.append(seccomp)
            info_r, info_w = os.pipe2(os.O_CLOEXEC)
            own.append(info_w)
            self._setup_errors, errors_w = os.pipe2(os.O_CLOEXEC)
            own.append(errors_w)
            self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            control = theirs.detach()
            own.append(control)
            fds = bwrap.Fds(etc=etc, seccomp=seccomp, info=info_w, control=control)
            self._group = (
                host.cgroups.create(self.id, self.shape.limits, self.shape.freezable)
                if host.cgroups
                else None
            )
            if self._group is not None and self._background:
                self._group.weigh(background=True)
            argv = bwrap.command(
                host.bwrap,
                self.shape,
                fds,
                host.etc_binds,
                self._slot,
                bound,
                memory_rlimit=self._group is None,
                image=self._image_root(),
            )
            passed = [*own, *(bound.fds if bound is not None else ())]
            if self._group is not None and host.gate is not None:
                gate = Gate()
                argv = gate.wrap(host.gate, argv)
                passed.append(gate.held)
            try:
                # Shielded: cancelled while the spawner's thread starts bwrap, we would
                # never learn its pid, and it would outlive everything that ends sandboxes.
                with anyio.CancelScope(shield=True):
                    started = await host.spawner.call(self.uid, _popen, argv, errors_w, passed)
                self._bwrap = started
                if gate is not None and self._group is not None:
                    self._group.attach(self._bwrap.pid)  # bwrap, and all it will start
                    gate.open()
            except OSError as exc:
                raise SandboxError(f"could not start bwrap: {exc}") from exc
        except BaseException:
            if info_r >= 0:
                os.close(info_r)
            raise
        finally:
            for fd in own:
                os.close(fd)
            if gate is not None:
                gate.close()
        self._exit_pidfd = os.pidfd_open(self._bwrap.pid)
        self._control.setblocking(False)
        os.set_blocking(info_r, False)
        self._listening = True
        host.tasks.start_soon(self._listen, name=f"sandbox {self.id}")
        try:
            await self._confine(info_r, ready)
        finally:
            os.close(info_r)

    async def _confine(self, info_r: int, ready: bool) -> None:
        info = None
        deadline = anyio.current_time() + SETUP_TIMEOUT_S
        # Shielded: cancelled before bwrap tells it, the init's pid would be lost, and with
        # it the way to reap the init once bwrap is gone (it would stay our zombie).
        with anyio.CancelScope(shield=True, deadline=deadline):
            info = await _read_info(info_r)
        if info is not None:
            pid = int(info["child-pid"])
            self._init_pidfd = os.pidfd_open(pid)
            if ready:
                with anyio.CancelScope(deadline=deadline):
                    await self._ready_or_exit()
        if info is None or (ready and not self._ready.is_set()):
            raise SandboxError(f"sandbox set-up failed: {self._setup_report()}")

    async def _ready_or_exit(self) -> None:
        assert self._exit_pidfd is not None
        async with anyio.create_task_group() as tg:

            async def bwrap_exit() -> None:
                assert self._exit_pidfd is not None
                await anyio.wait_readable(self._exit_pidfd)
                tg.cancel_scope.cancel()

            tg.start_soon(bwrap_exit)
            await self._ready.wait()
            tg.cancel_scope.cancel()

    def _image_root(self) -> bwrap.ImageRoot | None:
        """Its runtime's root where bwrap reaches it (:mod:`roots`); None: the host's."""
        root = self._hold.runtime.rootfs
        if root is None:
            return None
        if self._host.roots is not None:
            self._rooted = True
            root = self._host.roots.take(self._hold)
        return bwrap.ImageRoot(str(root), str(self._host.etc))

    def _setup_report(self) -> str:
        if self._setup_errors is None:
            return "bwrap did not start"
        with contextlib.suppress(OSError):
            os.set_blocking(self._setup_errors, False)
            text = os.read(self._setup_errors, 4096).decode(errors="replace").strip()
            if text:
                return text
        return "no report"

    async def attach(self, home: Path | None, mounts: tuple[Mount, ...] = ()) -> None:
        """Mount the request's thread ``home`` at /home/baponi (None: a fresh tmpfs of the
        shape's size) and ``mounts`` under /data; once, before the first process. A
        sandbox not launched yet is launched here, with them."""
        if self._attached:
            raise SandboxError("this sandbox has its mounts already")
        self._attached = True
        _check_targets(mounts)
        opened: list[int] = []
        try:
            home_fd = None
            if home is not None:
                home_fd = _open_dir(self._shared(home, HOME), HOME)
                opened.append(home_fd)
            mount_fds = []
            for mount in mounts:
                self._shared(mount.source, mount.target)
                mount_fds.append(_open_mount(mount))
                opened.append(mount_fds[-1])
            if home_fd is not None or mounts:
                await self._map_ids()
            if self._bwrap is not None:
                self._mount_into_running(home_fd, mounts, mount_fds)
            else:
                await self._launch(self._bound(home_fd, mounts, mount_fds), ready=False)
        finally:
            for fd in opened:
                os.close(fd)

    async def _map_ids(self) -> None:
        """Make the id-mapping of its home and volumes (a user namespace for its uid,
        :meth:`Uids.idmap`) unless it is at hand: once per uid and server, and only for a
        sandbox that mounts something (as root)."""
        uids = self._host.uids
        if uids is None or self.uid is None or uids.mapped(self.uid):
            return
        try:
            await anyio.to_thread.run_sync(uids.idmap, self.uid)
        except OSError as exc:
            raise SandboxError(f"no id-mapping for uid {self.uid}: {exc}") from None

    def _mount_into_running(
        self, home_fd: int | None, mounts: tuple[Mount, ...], fds: list[int]
    ) -> None:
        """Mount into the slot of the running sandbox, which sees them by propagation."""
        if self._gone.is_set():
            raise SandboxError("the sandbox has ended")
        if home_fd is None:
            assert self.uid is not None
            attach.tmpfs(self._slot.home, self.shape.limits.home_bytes, self.uid, 0o700)
            self._mounted.append(self._slot.home)
        self._mount_in_slot(home_fd, mounts, fds)

    def _bound(self, home_fd: int | None, mounts: tuple[Mount, ...], fds: list[int]) -> bwrap.Bound:
        """What bwrap is to bind at launch. As root, each is mounted in the slot first,
        where bwrap (as the sandbox uid) can reach it; otherwise bwrap, as ourselves,
        binds the descriptors."""
        if not self._host.root:
            sources = tuple(str(fd) for fd in fds)
            home = None if home_fd is None else str(home_fd)
            return bwrap.Bound(home, tuple(zip(mounts, sources, strict=True)), by_fd=True)
        points = self._mount_in_slot(home_fd, mounts, fds)
        home = None if home_fd is None else str(self._slot.home)
        return bwrap.Bound(home, tuple(zip(mounts, map(str, points), strict=True)), by_fd=False)

    def _mount_in_slot(
        self, home_fd: int | None, mounts: tuple[Mount, ...], fds: list[int]
    ) -> list[Path]:
        """The home (if any) at the slot's ``home/``, each mount at its place under
        ``data/``; the mount points. Each is id-mapped to the sandbox's uid (made already,
        :meth:`_map_ids`)."""
        assert self._host.uids is not None and self.uid is not None
        if home_fd is None and not mounts:
            return []
        idmap = self._host.uids.idmap(self.uid)
        if home_fd is not None:
            attach.bind(home_fd, self._slot.home, read_only=False, idmap=idmap)
            self._mounted.append(self._slot.home)
        points = []
        for mount, fd in zip(mounts, fds, strict=True):
            points.append(self._slot.mount_point(mount.target))
            attach.bind(fd, points[-1], mount.read_only, idmap)
            self._mounted.append(points[-1])
        return points

    def _shared(self, source: Path, target: str) -> Path:
        """``source``, if it lies in a directory shared with sandboxes: a bug elsewhere
        can then never mount the server's own files."""
        if ".." in source.parts or not any(source.is_relative_to(d) for d in self._host.shared):
            raise MountError(f"cannot mount {target}: its source is not shared")
        return source

    # processes

    async def start(self, command: Command, *, early: bool = False) -> Process:
        """Start ``command``; raises SandboxError if it could not be executed.

        ``early``: in a sandbox prepared ahead and not attached yet: the server's own
        process that waits for a request (a warm interpreter, :mod:`warm`). It sees the
        request's mounts appear once they are attached."""
        if self._closed or not (self._attached or (early and self._bwrap is not None)):
            raise SandboxError("start needs an attached sandbox that is not closed")
        if self._gone.is_set():
            raise SandboxError("the sandbox has ended")
        id = next(self._ids)
        try:
            message = agent.spawn(
                id, command.argv, command.env, command.cwd, command.cpu_seconds, command.last
            )
            for name, data in command.files.items():
                self._slot.write(name, data)
        except (ValueError, FileExistsError) as exc:
            raise SandboxError(f"cannot start this process: {exc}") from None
        self.put_secrets(command.secrets)
        ends: list[int] = []  # the process's: closed here once the agent has them
        pipes: list[int] = []  # ours: closed by the process, or here on failure
        try:
            stdin = os.pipe2(os.O_CLOEXEC) if command.stdin else None
            if stdin is None:
                ends.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            else:
                ends.append(stdin[0])
                pipes.append(stdin[1])
            for _ in ("stdout", "stderr"):
                reader, writer = os.pipe2(os.O_CLOEXEC)
                pipes.append(reader)
                ends.append(writer)
            process = Process(
                self,
                id,
                PipeWriter(pipes[0]) if stdin is not None else None,
                PipeReader(pipes[-2]),
                PipeReader(pipes[-1]),
            )
            pipes.clear()
            self._processes[id] = process
            try:
                await self._send(message, ends)
            except BaseException:
                self._processes.pop(id, None)
                process.close()
                raise
        finally:
            for fd in (*ends, *pipes):
                os.close(fd)
        try:
            with anyio.move_on_after(SETUP_TIMEOUT_S):
                await process._started.wait()
        except BaseException:  # cancelled: nobody will have the process to close
            process.close()
            raise
        if process.pid is None:
            process.close()
            if process._error:
                raise SandboxError(
                    f"could not start {command.argv[0]}: {os.strerror(process._error)}"
                )
            raise SandboxError(f"the sandbox ended: {self._setup_report()}")
        return process

    async def listen(self, port: int) -> None:
        """Have its init accept, and close unread, connections on its own 127.0.0.1:``port``
        (once per sandbox): a port that a readiness probe finds open, at no process's cost.
        Sent before a later :meth:`start`, it is listening by the time that process runs."""
        await self._send(agent.listen(port), ())

    def put(self, name: str, data: bytes) -> None:
        """A file its processes read at /run/baponi/<name> (what ``Command.files`` are)."""
        try:
            self._slot.write(name, data)
        except (ValueError, FileExistsError) as exc:
            raise SandboxError(f"cannot give this file: {exc}") from None

    def put_secrets(self, secrets: Mapping[str, bytes]) -> None:
        """Files its processes read at /run/secrets/<path> (``Command.secrets``), the
        sandbox's own to read alone."""
        for path, secret in secrets.items():
            try:
                self._slot.write_secret(path, secret, self.uid)
            except (ValueError, OSError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                raise SecretsError(f"cannot write secret {path!r}: {reason}") from None

    def foreground(self) -> None:
        """Give it the CPU share of any sandbox again (it was prepared in the background)."""
        if self._background and self._group is not None:
            self._group.weigh(background=False)
        self._background = False

    def forget(self, name: str) -> None:
        """Remove /run/baponi/<name> again (what a waiting process has read already)."""
        self._slot.unlink(name)

    def host_pid(self, process: Process) -> int | None:
        """The host's pid of one of its processes (found in its cgroup by the pid the
        init reported: the last of its ``NSpid``)."""
        if process.host_pid is not None:
            return process.host_pid
        for pid in self.members() or ():
            with contextlib.suppress(OSError, ValueError, StopIteration):
                status = Path(f"/proc/{pid}/status").read_text()
                line = next(x for x in status.splitlines() if x.startswith("NSpid:"))
                if int(line.split()[-1]) == process.pid:
                    process.host_pid = pid
                    return pid
        return None

    def members(self) -> frozenset[int] | None:
        """The host pids in its cgroup (None: it has no cgroup)."""
        return frozenset(self._group.pids()) if self._group is not None else None

    def intact(self, members: frozenset[int] | None) -> bool:
        """Whether it is still as it was left: launched, not attached, its init alive and
        listened to, and its cgroup holding exactly ``members`` (what :meth:`members`
        said then: no process came or went)."""
        if self._closed or self._attached or self._gone.is_set() or self._init_pidfd is None:
            return False
        if select.select([self._init_pidfd], [], [], 0)[0]:  # readable: the init has exited
            return False
        return members is not None and self.members() == members

    async def _send(self, message: bytes, fds: list[int] | tuple[int, ...]) -> None:
        if self._control is None or self._gone.is_set():
            raise SandboxError("the sandbox has ended")
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))] if fds else []
        while True:
            try:
                self._control.sendmsg([message], rights)
                return
            except BlockingIOError:
                await anyio.wait_writable(self._control)
            except OSError as exc:  # the agent is gone
                raise SandboxError("the sandbox has ended") from exc

    async def _listen(self) -> None:
        """Follow the agent's reports until it ends (with it, every process)."""
        assert self._control is not None
        try:
            while True:
                await anyio.wait_readable(self._control)
                try:
                    data = self._control.recv(64)
                except BlockingIOError:
                    continue
                if not data:
                    return
                self._dispatch(agent.parse(data))
        except AgentError as exc:
            log.error("sandbox %s: its init is not to be trusted (%s): killed", self.id, exc)
            self.kill()
        except (OSError, anyio.ClosedResourceError):
            return
        finally:
            await self._wait_init()
            self._gone.set()
            for process in self._processes.values():
                process._ended(KILLED, signal.SIGKILL)
            self._processes.clear()

    async def _wait_init(self) -> None:
        """Once the agent's socket has closed: kill what is left and wait for the init to
        exit, which the kernel lets it do only after every other process of its pid
        namespace has gone; so a process reported ended with its sandbox is gone. Bounded
        and shielded: a process stuck in the kernel must not hold up the caller."""
        if self._init_pidfd is None:
            return
        self.kill()
        with anyio.CancelScope(shield=True), anyio.move_on_after(INIT_EXIT_S):
            await anyio.wait_readable(self._init_pidfd)

    def _dispatch(self, event: agent.Event) -> None:
        if event.kind is Kind.READY:
            if event.id != 0 or event.value != agent.PROTOCOL or self._ready.is_set():
                raise AgentError("an unexpected READY")
            self._ready.set()
            return
        process = self._processes.get(event.id)
        if process is None or (event.kind is Kind.EXITED) != (process.pid is not None):
            raise AgentError(f"{event.kind.name} for process {event.id}")
        if event.kind is Kind.STARTED:
            if event.value <= 0:
                raise AgentError("a process without a pid")
            process.pid = event.value
            process._started.set()
            return
        del self._processes[event.id]
        if event.kind is Kind.FAILED:
            process._error = event.value
            process._ended(127, None)
        else:
            process._ended(*_wait_status(event.value))

    # the end

    def kill(self) -> None:
        """SIGKILL the sandbox's init: the kernel ends every process of its pid namespace,
        which none can leave. The cgroup is killed too where that is not enough: without
        the init's pidfd (only bwrap is known), and in a freezable group (a frozen init
        takes its SIGKILL only once thawed). Else what could be left in the group goes
        with its removal (:meth:`Cgroup.remove`), off the request's path."""
        if self._init_pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._init_pidfd, signal.SIGKILL)
        elif self._bwrap is not None:
            self._bwrap.kill()
        if self._group is not None and (self._init_pidfd is None or self.shape.freezable):
            self._group.kill()

    async def freeze(self) -> None:
        """Stop every process of the sandbox where it is, memory and files kept; raises
        SandboxError if they are not all stopped in time (then it is thawed again)."""
        group = self._freezer()
        if not await anyio.to_thread.run_sync(group.freeze):
            await self.thaw()
            raise SandboxError("the sandbox's processes did not all stop in time")

    async def thaw(self) -> None:
        """Let every process of a frozen sandbox run on from where it was."""
        await anyio.to_thread.run_sync(self._freezer().thaw)

    def _freezer(self) -> Cgroup:
        if self._group is None or not self.shape.freezable or self._gone.is_set():
            raise SandboxError("this sandbox cannot be paused")
        return self._group

    @property
    def cgroup(self) -> Cgroup | None:
        """Its cgroup, to read what it uses; None without cgroups."""
        return self._group

    @property
    def ended(self) -> bool:
        """Whether its init has gone, and with it every process it ran."""
        return self._gone.is_set()

    async def wait_ended(self) -> None:
        """Return once its init has gone (killed from inside, or the sandbox closed)."""
        await self._gone.wait()

    @property
    def egress_refused(self) -> int:
        """How many of its connections the egress proxy refused by its policy."""
        return self._tap.refused if self._tap is not None else 0

    def oom_kills(self) -> int:
        """How many of its processes the kernel killed for lack of memory."""
        return self._group.oom_kills() if self._group is not None else 0

    async def close(self, *, wait: bool = True) -> None:
        """End the sandbox and free everything it held; safe to call more than once.

        It returns once no process of the sandbox runs any more (bwrap, and with it the
        sandbox's pid namespace, has ended); with ``wait=False`` what it held (cgroup,
        mounts, slot) is freed in the background after that, off the caller's path."""
        if not self._closed:
            self._closed = True
            self.kill()
            if self._tap is not None:
                self._tap.close()
            with anyio.CancelScope(shield=True):
                await self._end()
            if wait:
                await self._free()
            else:
                self._host.tasks.start_soon(self._free, name=f"freeing sandbox {self.id}")
        if wait:
            await self._freed.wait()

    async def _end(self) -> None:
        """Wait for bwrap: it exits once the sandbox's init is gone, and the kernel ends
        the init's pid namespace, every process of it, first. Then the init's socket
        ends too."""
        if self._exit_pidfd is not None:
            with anyio.move_on_after(SETUP_TIMEOUT_S):
                await anyio.wait_readable(self._exit_pidfd)
            os.close(self._exit_pidfd)
        if self._bwrap is not None and self._bwrap.poll() is None:
            self._bwrap.kill()
            self._bwrap.wait()
        if self._control is not None:
            if self._listening:  # the init is dead: its socket's end comes at once
                with anyio.move_on_after(SETUP_TIMEOUT_S):
                    await self._gone.wait()
            anyio.notify_closing(self._control)
            self._control.close()
        if self._setup_errors is not None:
            os.close(self._setup_errors)

    async def _free(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self._host.janitor.call(self._release)
            finally:
                self._host.live.discard(self)
                self._freed.set()

    def _release(self) -> None:
        """Reap the init, unmount, remove the cgroup and the slot, and give the uid back
        if all that went: blocking, on the janitor's thread (in the server's mount
        namespace, where the mounts are)."""
        gone = True
        if self._init_pidfd is not None:
            # Readable once the init has exited, which the kernel lets it do only after
            # every other process of its pid namespace has been reaped.
            gone = bool(select.select([self._init_pidfd], [], [], INIT_EXIT_S)[0])
            with contextlib.suppress(ChildProcessError):  # not ours if we are no subreaper
                os.waitid(os.P_PIDFD, self._init_pidfd, os.WEXITED | os.WNOHANG)
            os.close(self._init_pidfd)
        elif self._bwrap is not None and self.uid is not None:  # bwrap's child never known
            gone = not uids.running_as(self.uid)
        for point in reversed(self._mounted):
            try:
                attach.detach(point)
            except OSError as exc:
                log.error("sandbox %s: %s", self.id, exc)
                gone = False
        self._mounted.clear()
        if self._group is not None:
            gone = self._group.remove() and gone
        self._slot.remove()
        if gone:  # else something of it may still read its root: the hold stays
            if self._rooted and self._host.roots is not None:
                self._host.roots.give(self._hold)
            self._hold.release()
        if self.uid is not None and self._host.uids is not None:
            if gone:
                self._host.uids.give(self.uid)
            else:  # something of it may live on: no other sandbox ever gets its uid
                log.error("sandbox %s: uid %d kept out of use", self.id, self.uid)


def _wait_status(status: int) -> tuple[int, int | None]:
    """The shell's status (the exit code, or 128 + the signal) and the signal, if one
    ended the process: ``exit(159)`` and a death by SIGSYS differ here, not in the first."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status), os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return KILLED, signal.SIGKILL  # the init reports ends only: nothing else is sent


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


def _popen(argv: list[str], errors: int, pass_fds: list[int]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, env={}, stdin=subprocess.DEVNULL, stdout=errors, stderr=errors, pass_fds=pass_fds
    )


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(f"baponi-{name}", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(path: Path, target: str) -> int:
    """Open a directory the server made without following a symlink planted in its place."""
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError as exc:
        raise MountError(f"cannot mount {target}: {_why(exc)}") from None


def _open_mount(mount: Mount) -> int:
    """An O_PATH descriptor of the mount's directory, walked down one name at a time."""
    fd = _open_dir(mount.source, mount.target)
    try:
        for name in mount.names:
            below = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = below
    except OSError as exc:
        os.close(fd)
        raise MountError(f"cannot mount {mount.target}: {_why(exc)}") from None
    return fd


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such directory"
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        return "not a directory (symbolic links are not followed)"
    return exc.strerror or "cannot open"


def _check_targets(mounts: tuple[Mount, ...]) -> None:
    """No mount at or inside another one: the inner one would be made inside the directory
    mounted at the outer one."""
    targets = [f"{m.target}/" for m in mounts]
    for i, one in enumerate(targets):
        for other in targets[i + 1 :]:
            if one.startswith(other) or other.startswith(one):
                raise SandboxError(f"mounts {one[:-1]} and {other[:-1]} overlap")
