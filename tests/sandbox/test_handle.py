"""The sandbox handle's contract, on real bubblewrap sandboxes: prepared before any
request, then attached, then running several processes (one after another and at once,
each with its own stdin, stdout and stderr) until it is killed and closed.

The runtime runs on a portal thread of its own: it moves that thread into a private
mount namespace, which must not be pytest's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import pytest

from baponi_core._sandbox import (
    Command,
    Mount,
    Process,
    Sandbox,
    SandboxError,
    SandboxRuntime,
    SecretsError,
    Shape,
    agent,
)
from baponi_core._sandbox.libc import call
from baponi_core._sandbox.mountns import PRIVATE_BASE
from baponi_core._sandbox.rootfs import BASE_ENV, STORAGE_UID
from tests.harness import (
    marker_processes,
    own_uids,
    run_probe,
    runtime_on_a_thread,
    wait_until,
    wait_until_async,
)

T = TypeVar("T")
PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Sandboxes:
    portal: anyio.from_thread.BlockingPortal
    runtime: SandboxRuntime
    shared: Path

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        return self.portal.call(fn, *args)

    def ready(self, home: Path | None = None, mounts: tuple[Mount, ...] = ()) -> Sandbox:
        """A prepared sandbox, attached."""

        async def make() -> Sandbox:
            sandbox = await self.runtime.prepare(Shape())
            await sandbox.attach(home, mounts)
            return sandbox

        return self.call(make)

    def inside(self, fn: Callable[[], T]) -> T:
        """``fn`` on the runtime's thread, in its mount namespace (where slots are)."""
        return self.portal.call(fn)

    def directory(self, name: str) -> Path:
        """A directory the sandbox may mount, owned by the sandbox uid."""
        path = self.shared / name
        path.mkdir()
        os.chown(path, STORAGE_UID, STORAGE_UID)
        return path


@pytest.fixture(scope="module")
def sandboxes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandboxes]:
    root = tmp_path_factory.mktemp("handle-runtime")
    shared = root / "shared"
    shared.mkdir()
    with runtime_on_a_thread(root / "run", [shared]) as (portal, runtime):
        yield Sandboxes(portal, runtime, shared)


def cgroups_of(sandbox: Sandbox) -> list[Path]:
    """The sandbox's cgroup directories (one per v1 controller, or one on v2)."""
    root, server = Path("/sys/fs/cgroup"), f"srv-{os.getpid()}-*"  # one per runtime
    found = [*root.glob(f"*/baponi/{server}/{sandbox.id}")]
    return found or [*root.glob(f"**/baponi-{server}/{sandbox.id}")]


def sleepers(marker: str) -> list[bytes]:
    """The processes named ``marker`` (by exec -a), wherever they run."""
    return [c for c in marker_processes(marker) if c.startswith(marker.encode())]


def slots() -> list[str]:
    """The slots of the runtime's sandboxes, seen from its thread."""
    return sorted(p.name for p in PRIVATE_BASE.glob("runtime-*/slots/sbx-*"))


def shell(script: str, stdin: bool = False, **env: str) -> Command:
    return Command(argv=("/bin/bash", "-c", script), env={**BASE_ENV, **env}, stdin=stdin)


async def collect(process: Process) -> tuple[int, str, str]:
    """Its status, stdout and stderr once it has ended."""
    out, err = bytearray(), bytearray()

    async def drain(pipe: Any, into: bytearray) -> None:
        while chunk := await pipe.receive():
            into += chunk

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain, process.stdout, out)
        tg.start_soon(drain, process.stderr, err)
        status = await process.wait()
    process.close()
    return status, out.decode(), err.decode()


def run(sandboxes: Sandboxes, sandbox: Sandbox, command: Command) -> tuple[int, str, str]:
    async def go() -> tuple[int, str, str]:
        return await collect(await sandbox.start(command))

    return sandboxes.call(go)


def test_prepared_sandbox_runs_nothing_until_a_process_is_started(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.call(sandboxes.runtime.prepare, Shape())
    try:
        groups = cgroups_of(sandbox)
        assert groups  # confined already, in its own cgroup: bwrap and its child, the init
        pids = (groups[0] / "cgroup.procs").read_text().split()
        names = sorted(Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids)
        assert names == ["bwrap", "init"]
        sandboxes.call(sandbox.attach, None, ())
        status, out, _ = run(sandboxes, sandbox, shell("ps -e -o pid=,args="))
        assert status == 0
        listed = [line.split(None, 1) for line in out.splitlines()]
        assert listed[0][0] == "1" and listed[0][1].startswith("/run/baponi/init ")  # its init
        assert [args for _, args in listed[1:]] == ["ps -e -o pid=,args="]  # bash exec'd it
    finally:
        sandboxes.call(sandbox.close)


def test_processes_one_after_another_share_the_sandbox(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.ready()
    try:
        first = run(sandboxes, sandbox, shell("echo kept > /tmp/note; echo $$"))
        second = run(sandboxes, sandbox, shell("cat /tmp/note; echo $$"))
        assert first[0] == second[0] == 0
        assert second[1].splitlines()[0] == "kept"
        assert first[1] != second[1].splitlines()[1]  # two processes, one /tmp
    finally:
        sandboxes.call(sandbox.close)


def test_processes_at_once_each_with_their_own_pipes(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.ready()

    async def both() -> list[tuple[int, str, str]]:
        # The reader waits on a FIFO the writer fills: they can only finish together.
        slow = await sandbox.start(shell("mkfifo /tmp/f; cat /tmp/f; echo err >&2; exit 3"))
        fast = await sandbox.start(
            shell("until [ -p /tmp/f ]; do sleep 0.01; done; echo hi > /tmp/f")
        )
        results: list[tuple[int, str, str]] = []
        async with anyio.create_task_group() as tg:

            async def one(process: Process) -> None:
                results.append(await collect(process))

            tg.start_soon(one, slow)
            tg.start_soon(one, fast)
        return sorted(results)

    try:
        assert sandboxes.call(both) == [(0, "", ""), (3, "hi\n", "err\n")]
    finally:
        sandboxes.call(sandbox.close)


def test_stdin_is_the_process_own(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.ready()

    async def echo() -> tuple[int, str, str]:
        process = await sandbox.start(shell("tr a-z A-Z", stdin=True))
        assert process.stdin is not None
        await process.stdin.send(b"hello " * 20000)  # more than a pipe holds: waits for room
        process.stdin.close()
        return await collect(process)

    try:
        status, out, _ = sandboxes.call(echo)
        assert (status, out) == (0, "HELLO " * 20000)
        # Without stdin=True a process reads /dev/null: at once at its end.
        assert run(sandboxes, sandbox, shell("cat; echo done")) == (0, "done\n", "")
    finally:
        sandboxes.call(sandbox.close)


def test_statuses_as_a_shell_reports_them(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.ready()

    async def signalled() -> int:
        process = await sandbox.start(shell("echo up; exec sleep 30"))
        assert await process.stdout.receive() == b"up\n"
        await process.signal(signal.SIGTERM)
        status = await process.wait()
        process.close()
        return status

    try:
        assert run(sandboxes, sandbox, shell("exit 7"))[0] == 7
        assert run(sandboxes, sandbox, shell("kill -SEGV $$"))[0] == 128 + signal.SIGSEGV
        assert sandboxes.call(signalled) == 128 + signal.SIGTERM
    finally:
        sandboxes.call(sandbox.close)


def test_environment_and_working_directory_are_exactly_the_command_s(
    sandboxes: Sandboxes,
) -> None:
    sandbox = sandboxes.ready()
    try:
        command = Command(argv=("/usr/bin/env",), env={"ONLY": "this"}, cwd="/tmp")
        assert run(sandboxes, sandbox, command) == (0, "ONLY=this\n", "")
        status, out, _ = run(sandboxes, sandbox, Command(argv=("pwd",), env=BASE_ENV, cwd="/tmp"))
        assert (status, out) == (0, "/tmp\n")  # found on the command's own PATH
    finally:
        sandboxes.call(sandbox.close)


def test_files_are_given_read_only_under_run_baponi(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.ready()
    script = "print(open(__file__).read() == open('/run/baponi/main.py').read())"
    command = Command(
        argv=("/usr/bin/python3", "/run/baponi/main.py"),
        env=BASE_ENV,
        files={"main.py": script.encode()},
    )
    try:
        assert run(sandboxes, sandbox, command) == (0, "True\n", "")
        status, _, err = run(sandboxes, sandbox, shell("echo x > /run/baponi/main.py"))
        assert status == 1 and "Read-only file system" in err
        with pytest.raises(SandboxError, match="cannot start"):  # a name already given
            sandboxes.call(sandbox.start, command)
        for name in ("../x", "init", "a/b", ""):
            with pytest.raises(SandboxError, match="cannot start"):
                sandboxes.call(sandbox.start, Command(argv=("true",), files={name: b""}))
    finally:
        sandboxes.call(sandbox.close)


def test_secrets_are_given_read_only_under_run_secrets(sandboxes: Sandboxes) -> None:
    secrets = {"db/tls/ca.pem": b"CA\n", "db/token": b"T\n", "api/key": b"K\n"}
    sandbox, other = sandboxes.ready(), sandboxes.ready()
    probe = (
        "cd /run/secrets && find . -type f | sort && cat db/tls/ca.pem db/token && "
        "stat -c '%a %u' db/token db/tls && (echo x > db/token) 2>&1 | grep -c Read-only"
    )
    try:
        status, out, err = run(sandboxes, sandbox, replace(shell(probe), secrets=secrets))
        assert (status, err) == (0, "")
        assert out.splitlines() == [
            "./api/key",
            "./db/tls/ca.pem",
            "./db/token",
            "CA",
            "T",
            "400 1000",  # the sandbox user's alone
            "755 65534",  # a directory the server made
            "1",
        ]
        # A process started later sees them too; another sandbox never does.
        assert run(sandboxes, sandbox, shell("cat /run/secrets/api/key")) == (0, "K\n", "")
        assert run(sandboxes, other, shell("find /run/secrets | wc -l")) == (0, "1\n", "")
        for path in ("../x", "/abs", "a/./b", "a//b", "", "db/token"):  # the last: given
            with pytest.raises(SecretsError, match="cannot write secret"):
                sandboxes.call(sandbox.start, replace(shell("true"), secrets={path: b"x"}))
        found = sandboxes.inside(lambda: list(PRIVATE_BASE.glob(f"runtime-*/slots/{sandbox.id}")))
        assert len(found) == 1  # in the runtime's namespace
        secret_dir = found[0] / "secrets"
        assert sandboxes.inside(secret_dir.is_dir)
    finally:
        sandboxes.call(sandbox.close)
        sandboxes.call(other.close)
    assert not sandboxes.inside(secret_dir.exists)  # gone with the slot


def test_a_program_that_cannot_be_executed_is_a_sandbox_error(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.ready()
    try:
        with pytest.raises(SandboxError, match="No such file"):
            sandboxes.call(sandbox.start, Command(argv=("/no/such/program",)))
        with pytest.raises(SandboxError, match="No such file"):
            sandboxes.call(sandbox.start, Command(argv=("true",), cwd="/no/such/dir"))
        assert run(sandboxes, sandbox, shell("echo still here")) == (0, "still here\n", "")
    finally:
        sandboxes.call(sandbox.close)


def test_the_init_cannot_be_killed_from_inside(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.ready()
    try:
        # Sent (the kernel takes them), and dropped: pid 1 has no handler for either.
        assert run(sandboxes, sandbox, shell("kill -KILL 1 && kill -TERM 1 && echo sent")) == (
            0,
            "sent\n",
            "",
        )
        assert run(sandboxes, sandbox, shell("echo alive")) == (0, "alive\n", "")
    finally:
        sandboxes.call(sandbox.close)


def test_the_init_listens_where_asked_and_closes_what_it_accepts(sandboxes: Sandboxes) -> None:
    """LISTEN: a port of the sandbox's own loopback that accepts, each connection closed
    at once unread, with no process of its own; the init goes on serving while code
    floods it with connections."""
    sandbox = sandboxes.ready()
    port = 44771
    try:
        before = run(sandboxes, sandbox, shell(f"(exec 3<>/dev/tcp/127.0.0.1/{port}) || echo shut"))
        assert before[1] == "shut\n"
        sandboxes.call(sandbox.listen, port)
        # Accepted, then closed by the init: cat sees the end at once, nothing sent.
        script = f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo open && cat <&3 && echo ended"
        assert run(sandboxes, sandbox, shell(script))[:2] == (0, "open\nended\n")
        flood = (
            f"for i in $(seq 500); do (exec 3<>/dev/tcp/127.0.0.1/{port}; echo x >&3) 2>/dev/null; "
            f"done; exec 3<>/dev/tcp/127.0.0.1/{port} && echo still; "
            f"(exec 4<>/dev/tcp/127.0.0.1/{port + 1}) 2>/dev/null || echo other-shut; "
            "set -- /proc/[0-9]*; echo $#"
        )
        status, out, _ = run(sandboxes, sandbox, shell(flood))
        # pid 1 and this shell (counted by the shell itself): no listener process
        assert (status, out.splitlines()) == (0, ["still", "other-shut", "2"])
        assert run(sandboxes, sandbox, shell("echo served")) == (0, "served\n", "")
    finally:
        sandboxes.call(sandbox.close)


def test_a_second_listen_ends_the_sandbox(sandboxes: Sandboxes) -> None:
    """The init takes one LISTEN; another, as anything it never gets, ends the sandbox."""
    sandbox = sandboxes.ready()
    try:
        sandboxes.call(sandbox.listen, 44771)
        sandboxes.call(sandbox.listen, 44772)
        sandboxes.call(lambda: wait_until_async(lambda: sandbox.ended, within=10, what="its end"))
    finally:
        sandboxes.call(sandbox.close)


def test_a_last_command_ends_its_sandbox_with_it(sandboxes: Sandboxes) -> None:
    marker = "handle-last-marker"
    sandbox = sandboxes.ready()

    async def scenario() -> tuple[int, int, str]:
        other = await sandbox.start(shell(f"exec -a {marker} sleep 60"))
        await wait_until_async(lambda: sleepers(marker), within=10, what="the sleeper")
        last = await sandbox.start(replace(shell("echo done"), last=True))
        status, out, _ = await collect(last)
        other_status = await other.wait()  # went with the sandbox
        other.close()
        return status, other_status, out

    try:
        assert sandboxes.call(scenario) == (0, 137, "done\n")
        assert sleepers(marker) == []
        with pytest.raises(SandboxError, match="ended"):
            sandboxes.call(sandbox.start, shell("true"))
    finally:
        sandboxes.call(sandbox.close)


def test_launched_at_attach_with_its_mounts(sandboxes: Sandboxes) -> None:
    """prepare(ahead=False): nothing runs before attach, which launches the sandbox with
    the home and volumes bound as bwrap sets it up."""
    home = sandboxes.directory("home-lazy")
    volume = sandboxes.directory("volume-lazy")
    (volume / "in.txt").write_text("lazy")
    sandbox = sandboxes.call(lambda: sandboxes.runtime.prepare(Shape(), ahead=False))
    try:
        assert cgroups_of(sandbox) == []  # not even its cgroup yet
        sandboxes.call(sandbox.attach, home, (Mount(volume, (), "/data/v", True),))
        script = "cat /data/v/in.txt; echo made > out.txt; touch /data/v/x; mkdir /data/y"
        status, out, err = run(sandboxes, sandbox, shell(script))
        assert (status, out) == (1, "lazy")  # mkdir failed last
        assert err.count("Read-only file system") == 2
        assert (home / "out.txt").read_text() == "made\n"
    finally:
        sandboxes.call(sandbox.close)
    assert not (home / "out.txt").is_symlink() and (volume / "in.txt").exists()


def test_close_without_waiting_frees_in_the_background(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.ready()
    groups = cgroups_of(sandbox)

    async def scenario() -> None:
        await sandbox.close(wait=False)  # returns once nothing of it runs any more
        await sandbox.close()  # then waits for the rest to be freed

    sandboxes.call(scenario)
    assert not any(d.exists() for d in groups)
    assert sandboxes.inside(slots) == []


def test_kill_ends_every_process_and_close_frees_everything(sandboxes: Sandboxes) -> None:
    marker = "handle-kill-marker"
    sandbox = sandboxes.ready()
    groups = cgroups_of(sandbox)
    assert groups and sandboxes.inside(slots) == [sandbox.id]

    async def kill_all() -> list[int]:
        started = [await sandbox.start(shell(f"exec -a {marker} sleep 60")) for _ in range(3)]
        await sandbox.start(shell(f"(exec -a {marker} sleep 60) & disown; exit 0"))
        # all four, the orphan too
        assert await wait_until_async(lambda: len(sleepers(marker)) == 4, within=10)
        sandbox.kill()
        statuses = [await p.wait() for p in started]
        for p in started:
            p.close()
        return statuses

    assert sandboxes.call(kill_all) == [137, 137, 137]
    with pytest.raises(SandboxError, match="ended"):
        sandboxes.call(sandbox.start, shell("true"))
    sandboxes.call(sandbox.close)
    sandboxes.call(sandbox.close)  # a second close is harmless
    assert sleepers(marker) == []
    assert not any(d.exists() for d in groups)
    assert sandboxes.inside(slots) == []


def test_attach_mounts_a_home_and_volumes_once(sandboxes: Sandboxes) -> None:
    home = sandboxes.directory("home-a")
    (home / "kept.txt").write_text("from the host")
    volume = sandboxes.directory("volume-a")
    (volume / "in.txt").write_text("data")
    sandbox = sandboxes.call(sandboxes.runtime.prepare, Shape())
    try:
        with pytest.raises(SandboxError, match="attached"):
            sandboxes.call(sandbox.start, shell("true"))
        sandboxes.call(sandbox.attach, home, (Mount(volume, (), "/data/v", True),))
        with pytest.raises(SandboxError, match="already"):
            sandboxes.call(sandbox.attach, None, ())
        script = "cat kept.txt /data/v/in.txt; echo new > made.txt; touch /data/v/x || true"
        status, out, err = run(sandboxes, sandbox, shell(script))
        assert (status, out) == (0, "from the hostdata")
        assert "Read-only file system" in err
        assert (home / "made.txt").read_text() == "new\n"
        assert (home / "made.txt").stat().st_uid == STORAGE_UID
    finally:
        sandboxes.call(sandbox.close)
    assert (home / "kept.txt").exists()  # closing unmounts; it never removes what was mounted


def test_sandboxes_never_see_each_other(sandboxes: Sandboxes) -> None:
    marker = "handle-neighbour"
    first, second = sandboxes.ready(), sandboxes.ready()

    try:
        run(sandboxes, first, shell("echo secret > /tmp/mine; echo secret > ~/mine"))
        sleeper = sandboxes.call(first.start, shell(f"exec -a {marker} sleep 30"))
        wait_until(lambda: sleepers(marker), within=10, what="the neighbour to run, on the host")
        status, out, _ = run(sandboxes, second, shell("ls -A /tmp ~; ps -e -o args="))
        assert status == 0
        assert out.startswith("/home/baponi:\n\n/tmp:\n")  # both empty
        assert marker not in out and "sleep" not in out
        sandboxes.inside(sleeper.close)
    finally:
        sandboxes.call(first.close)
        sandboxes.call(second.close)


def uids_of(marker: str) -> set[int]:
    """The real host uids of the processes named ``marker``."""
    found = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(
                marker.encode()
            ):
                status = (entry / "status").read_text()
                found.add(int(status.split("Uid:")[1].split()[0]))
    return found


def test_each_live_sandbox_has_a_host_uid_of_its_own(sandboxes: Sandboxes) -> None:
    """Concurrent sandboxes run as different uids of the range; a closed one's uid is the
    next one handed out again (lowest free first), and a home made by one uid is the
    next uid's own."""
    home = sandboxes.directory("uid-home")
    first, second = sandboxes.ready(home), sandboxes.ready()
    markers = [f"handle-uid-{n}-{uuid.uuid4().hex[:8]}" for n in (1, 2)]
    try:
        for sandbox, marker in zip((first, second), markers, strict=True):
            sandboxes.call(sandbox.start, shell(f"exec -a {marker} sleep 30"))
        wait_until(lambda: all(map(sleepers, markers)), within=10, what="both to run")
        assert [uids_of(m) for m in markers] == [{first.uid}, {second.uid}]
        assert first.uid != second.uid
        assert first.uid in own_uids(1) and second.uid in own_uids(1)
        status, _, _ = run(sandboxes, first, shell("echo made > ~/by-first"))
        assert status == 0
    finally:
        sandboxes.call(first.close)
    again = sandboxes.ready(home)
    try:
        assert again.uid == first.uid  # given back once all of it was gone, and reused
        status, out, _ = run(sandboxes, again, shell("cat ~/by-first; stat -c %u ~/by-first"))
        assert (status, out) == (0, "made\n1000\n")
        assert (home / "by-first").stat().st_uid == STORAGE_UID  # stored as the one owner
    finally:
        sandboxes.call(again.close)
        sandboxes.call(second.close)


def test_closing_the_runtime_ends_its_sandboxes(tmp_path: Path) -> None:
    marker = "handle-runtime-close"

    async def scenario() -> tuple[int, str]:
        (tmp_path / "shared").mkdir()
        async with SandboxRuntime.open(tmp_path / "run", [tmp_path / "shared"]) as runtime:
            sandbox = await runtime.prepare(Shape())
            await sandbox.attach(None)
            process = await sandbox.start(shell(f"exec -a {marker} sleep 60"))
            # started is not yet renamed: wait for the exec
            await wait_until_async(
                lambda: len(marker_processes(marker)) == 1, within=10, what="the sleeper"
            )
        status = await process.wait()
        process.close()
        try:
            await sandbox.start(shell("true"))
        except SandboxError as exc:
            return status, str(exc)
        return status, "started"

    with anyio.from_thread.start_blocking_portal() as portal:
        try:
            status, restart = portal.call(scenario)
        finally:
            with contextlib.suppress(OSError):
                call("prctl", PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0, what="prctl")
    assert status == 137
    assert marker_processes(marker) == []
    assert "closed" in restart


@pytest.mark.parametrize(
    "report",
    [
        b"",
        b"\x02\x00\x00\x00" * 3,  # too short
        b"\x02\x00\x00\x00" * 5,  # too long
        b"\x09\x00\x00\x00\x01\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00",  # unknown kind
        b"\x02\x00\x00\x00\x01\x00\x00\x00\x05\x00\x00\x00\x01\x00\x00\x00",  # not zero
    ],
)
def test_malformed_reports_of_the_init_are_refused(report: bytes) -> None:
    with pytest.raises(agent.AgentError):
        agent.parse(report)


def test_requests_the_init_cannot_take_are_refused_before_sending() -> None:
    for argv, env in ((("a\0b",), {}), (("x",), {"A=B": "1"}), ((), {}), (("x",), {"": "1"})):
        with pytest.raises(ValueError):
            agent.spawn(1, argv, env, "/", None)
    with pytest.raises(ValueError, match="exceed"):
        agent.spawn(1, ("x" * agent.MAX_MESSAGE,), {}, "/", None)
    for port in (0, 65536):
        with pytest.raises(ValueError, match="not a port"):
            agent.listen(port)


def test_without_root_the_sandbox_is_launched_at_attach(request: pytest.FixtureRequest) -> None:
    """A server that is not root cannot mount into a running sandbox: the same handle then
    launches it at attach, its home and volumes on bwrap's command line."""
    nobody = 65534
    base = Path(tempfile.mkdtemp(prefix="baponi-unprivileged-"))  # pytest's are root's alone
    request.addfinalizer(lambda: shutil.rmtree(base))
    base.chmod(0o755)
    cache = base / "cache" / "baponi"  # the agent already built, as the server would find it
    for path in (base / "shared", base / "shared" / "home", base / "shared" / "vol", cache):
        path.mkdir(parents=True)
    built = agent.binary()
    shutil.copy(built, cache / built.name)
    (base / "shared" / "vol" / "in.txt").write_text("vol\n")
    for path in [base, *base.rglob("*")]:
        os.chown(path, nobody, nobody)
    become = ["setpriv", "--reuid", str(nobody), "--regid", str(nobody), "--clear-groups"]
    assert run_probe(Path(__file__).with_name("unprivileged.py"), base, *become) == {
        "slots_left": [],  # the connector file with its slot
        "launched_at_prepare": False,
        "status": 0,
        "out": "1000\nvol\n1\nt0ken\n400 1000\n",
        "uid": nobody,
    }
    made = base / "shared" / "home" / "made.txt"
    assert made.read_text() == "w\n" and made.stat().st_uid == nobody
