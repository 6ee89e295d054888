"""Escape and abuse battery, run through the HTTP API against a real server.

Every case asserts that the attack is blocked (or ends with the right status), and the
autouse ``still_healthy`` fixture then checks that the server answers /health, still runs
a trivial execution, and left no process of the sandbox uid running on the host.
"""

from __future__ import annotations

import re
import socket
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from baponi_core._sandbox.rootfs import STORAGE_UID
from baponi_core._sandbox.uids import DEFAULT_UIDS
from tests.harness import SERVER_SECRET, Server, on_both_paths, unique, wait_until

server = on_both_paths()  # every test: without the pool and with it

SECRET_NAME = "BAPONI_TEST_SECRET"
SECRET_VALUE = SERVER_SECRET  # in the environment of every server tests start
TMP_LIMIT = 256 << 20
FILE_SIZE_LIMIT = 1 << 30
OUTPUT_LIMIT = 1 << 20


def run(
    api: httpx.Client,
    code: str,
    language: str = "python",
    timeout: int = 20,
    thread_id: str | None = None,
) -> dict[str, Any]:
    """Execute ``code``; return the result with the recorded execution ``status`` added."""
    payload: dict[str, Any] = {
        "code": textwrap.dedent(code),
        "language": language,
        "timeout": timeout,
    }
    if thread_id is not None:
        payload["thread_id"] = thread_id
    response = api.post("/v1/sandbox/execute", json=payload)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    record = api.get(f"/v1/executions/{body['trace_id']}")
    assert record.status_code == 200, record.text
    body["status"] = record.json()["status"]
    return body


def new_thread() -> str:
    return unique("iso")


def _status(pid: str) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _descends_from(pid: str, ancestor: int) -> bool:
    for _ in range(64):
        try:
            pid = _status(pid)["PPid"]
        except OSError:
            return False
        if int(pid) == ancestor:
            return True
        if int(pid) <= 1:
            return False
    return False


def sandbox_uid_processes(server: Server) -> list[str]:
    """This server's processes running as a sandbox uid, zombies included.

    Other servers on the machine run sandboxes as uids of the same range, so a process
    counts as ours when it sits in this server's cgroups (which sandboxed code cannot
    leave) or descends from the server process.
    """
    found: dict[str, list[str]] = {}  # by sandbox (its cgroup), "" for none
    waiting: dict[str, bool] = {}  # whether all of a sandbox's processes are a pool's
    group = re.compile(rf"srv-{server.process.pid}-[0-9]+/(sbx-[0-9a-f]+)")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = _status(entry.name)
            cgroups = (entry / "cgroup").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # exited while we looked
        if not any(int(uid) in DEFAULT_UIDS for uid in status.get("Uid", "").split()):
            continue
        sandbox = group.search(cgroups)
        if sandbox is None and not _descends_from(entry.name, server.process.pid):
            continue
        key = sandbox[1] if sandbox else ""
        found.setdefault(key, []).append(
            f"{entry.name} {status.get('Name')} {status.get('State')} ppid={status.get('PPid')}"
        )
        waiting[key] = waiting.get(key, True) and _prepared(status, cmdline)
    return [line for key, lines in found.items() if not (key and waiting[key]) for line in lines]


BOOTS = (b"def _boot():", b"/run/baponi/.boot.js")  # the waiting Python's and Node's


def _prepared(status: dict[str, str], cmdline: bytes) -> bool:
    """Whether a process is one a pooled sandbox holds before its request: bwrap, the
    init, the waiting interpreter (its bootstrap on the command line)."""
    if status.get("State", "").startswith("Z"):
        return False
    return status.get("Name") in ("bwrap", "init") or any(boot in cmdline for boot in BOOTS)


def assert_no_sandbox_processes(server: Server, grace_s: float = 2.0) -> None:
    """Within ``grace_s``, no process of the sandbox uid is left of ``server``'s."""
    wait_until(
        lambda: not sandbox_uid_processes(server),
        grace_s,
        lambda: f"no sandbox process to be left, not {sandbox_uid_processes(server)}",
    )


def thread_home(server: Server, thread_id: str) -> Path:
    """The host directory of ``thread_id`` (thread ids here are unique across organisations)."""
    homes = list(server.threads.glob(f"*/{thread_id}"))
    assert len(homes) == 1, homes
    return homes[0]


@pytest.fixture(autouse=True)
def still_healthy(server: Server, api: httpx.Client) -> Iterator[None]:
    yield
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    body = run(api, "print('still ok')", timeout=10)
    assert body["success"] is True and body["stdout"] == "still ok\n", body
    assert_no_sandbox_processes(server)
    assert server.process.poll() is None


# -- host files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/etc/shadow", "/proc/1/root/etc/shadow", "/root", "/root/.bashrc"]
)
def test_host_secret_files_unreadable(api: httpx.Client, path: str) -> None:
    body = run(
        api,
        f"""
        import errno, os
        p = {path!r}
        try:
            print("LIST", os.listdir(p)) if os.path.isdir(p) else print("READ", open(p).read())
        except OSError as e:
            print("ERR", errno.errorcode[e.errno])
        """,
    )
    assert body["stdout"].strip() in ("ERR ENOENT", "ERR EACCES"), body
    if Path("/etc/shadow").exists():
        host_shadow = Path("/etc/shadow").read_text()
        for line in host_shadow.splitlines():
            assert line not in body["stdout"] + body["stderr"]


def test_passwd_has_no_host_users(api: httpx.Client) -> None:
    body = run(api, "print(open('/etc/passwd').read(), end='')")
    assert body["success"], body
    users = {line.split(":")[0] for line in body["stdout"].splitlines() if line}
    assert users <= {"root", "baponi", "nobody"}, users
    host_users = {
        line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines() if line
    }
    assert not (host_users - {"root", "baponi", "nobody"}) & users


# -- server state and other threads --------------------------------------------------------

WALK = """
import os
NEEDLES = [n[::-1] for n in REVERSED]  # reversed in the code, so the code itself never matches
hits = []
for root, dirs, files in os.walk("/"):
    if root == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys")]
    for name in dirs + files:
        path = os.path.join(root, name)
        if name in NAMES or any(n in path for n in NEEDLES):
            hits.append(path)
        elif GREP and name in files and not path.startswith(("/usr/", "/dev/")):
            try:
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as f:
                        if any(n.encode() in f.read(4 << 20) for n in NEEDLES):
                            hits.append(path)
            except OSError:
                pass
print("HITS", hits)
print("HOME", sorted(os.listdir("/home")))
print("EXISTS", [os.path.exists(n) for n in NEEDLES])
"""


def walk_code(names: list[str], needles: list[str], grep: bool) -> str:
    reversed_needles = [n[::-1] for n in needles]
    return f"NAMES = {names!r}\nREVERSED = {reversed_needles!r}\nGREP = {grep!r}\n" + WALK


@pytest.mark.slow
def test_server_database_and_home_invisible(server: Server, api: httpx.Client) -> None:
    assert (server.home / "baponi.db").is_file()
    names = ["baponi.db", "baponi.db-wal", "baponi.db-shm"]
    body = run(api, walk_code(names, [str(server.home)], grep=False), timeout=30)
    assert body["success"], body
    lines = body["stdout"].splitlines()
    assert "HITS []" in lines, body["stdout"]
    assert "HOME ['baponi']" in lines
    assert "EXISTS [False]" in lines


@pytest.mark.slow
def test_other_thread_home_invisible(api: httpx.Client) -> None:
    secret = f"thread-a-secret-{uuid.uuid4().hex}"
    thread_a, thread_b = new_thread(), new_thread()
    wrote = run(api, f"open('{secret}.txt', 'w').write({secret!r})", thread_id=thread_a)
    assert wrote["success"], wrote
    # The file name is listed reversed too: the walk looks for it, the code does not name it.
    code = walk_code([], [secret, thread_a], grep=True)
    body = run(api, code, thread_id=thread_b, timeout=30)
    assert body["success"], body
    lines = body["stdout"].splitlines()
    assert "HITS []" in lines, body["stdout"]
    assert "HOME ['baponi']" in lines
    escaped = run(api, f"print(open('../{thread_a}/{secret}.txt').read())", thread_id=thread_b)
    assert secret not in escaped["stdout"] and "FileNotFoundError" in escaped["stderr"], escaped


# -- writes outside the home ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/usr/x",
        "/etc/x",
        "/x",
        "/run/baponi/x",
        "/run/secrets/x",
        "/usr/local/x",
        "/proc/sys/kernel/hostname",
    ],
)
def test_write_outside_home_fails(api: httpx.Client, path: str) -> None:
    body = run(
        api,
        f"""
        import errno
        try:
            with open({path!r}, "w") as f:
                f.write("pwned")
            print("WROTE")
        except OSError as e:
            print("ERR", errno.errorcode[e.errno])
        """,
    )
    assert body["stdout"].strip() in ("ERR EROFS", "ERR EACCES", "ERR ENOENT", "ERR EPERM"), body


def test_tmp_writable_but_not_persistent(api: httpx.Client) -> None:
    thread = new_thread()
    first = run(
        api,
        "open('/tmp/marker', 'w').write('x'); import os; print(os.listdir('/tmp'))",
        thread_id=thread,
    )
    assert first["stdout"] == "['marker']\n", first
    second = run(api, "import os; print(os.listdir('/tmp'))", thread_id=thread)
    assert second["stdout"] == "[]\n", second


# -- network --------------------------------------------------------------------------------


def host_addresses() -> list[str]:
    """127.0.0.1 and, when there is one, the host's primary non-loopback address."""
    addresses = ["127.0.0.1"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))  # no packet is sent: this only picks a route
            address = probe.getsockname()[0]
        except OSError:
            address = None
    if address and not address.startswith("127."):
        addresses.append(address)
    return addresses


def test_tcp_egress_to_host_refused(api: httpx.Client) -> None:
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        targets = [(address, port) for address in host_addresses()]
        body = run(
            api,
            f"""
            import errno, socket
            for target in {targets!r}:
                s = socket.socket()
                s.settimeout(3)
                try:
                    s.connect(tuple(target))
                    print("CONNECTED", target)
                except OSError as e:
                    print("ERR", errno.errorcode.get(e.errno, e))
            """,
        )
        results = body["stdout"].splitlines()
        assert len(results) == len(targets), body
        for line in results:
            assert line in ("ERR ECONNREFUSED", "ERR ENETUNREACH"), body
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_dns_resolution_fails(api: httpx.Client) -> None:
    body = run(
        api,
        """
        import socket
        for name in ("example.com", "pypi.org"):
            try:
                print("RESOLVED", socket.getaddrinfo(name, 443))
            except socket.gaierror as e:
                print("GAIERROR")
        """,
    )
    assert body["stdout"] == "GAIERROR\nGAIERROR\n", body


def test_vsock_and_interfaces(api: httpx.Client) -> None:
    body = run(
        api,
        """
        import errno, os, socket
        try:
            socket.socket(40, socket.SOCK_STREAM)  # AF_VSOCK: not namespaced
            print("VSOCK OPEN")
        except OSError as e:
            print("VSOCK", errno.errorcode[e.errno])
        print("IFACES", [name for _, name in socket.if_nameindex()])
        print("SYS", os.path.exists("/sys"))
        """,
    )
    assert body["stdout"].splitlines() == ["VSOCK EAFNOSUPPORT", "IFACES ['lo']", "SYS False"], body


# -- the server's environment -----------------------------------------------------------------


def test_server_environment_not_leaked(api: httpx.Client) -> None:
    body = run(
        api,
        f"""
        import os
        def read(path):
            try:
                return open(path, "rb").read()
            except OSError as e:
                return repr(e).encode()
        values = os.environ.values()
        print("ENV", {SECRET_NAME!r} in os.environ, any({SECRET_VALUE!r} in v for v in values))
        for path in ("/proc/self/environ", "/proc/1/environ"):
            data = read(path)
            print(path, {SECRET_NAME!r}.encode() in data, {SECRET_VALUE!r}.encode() in data)
        print("PID1", read("/proc/1/environ"))
        """,
    )
    assert body["success"], body
    assert body["stdout"].splitlines() == [
        "ENV False False",
        "/proc/self/environ False False",
        "/proc/1/environ False False",
        # pid 1 is the sandbox's init, started with no environment at all and not
        # dumpable: sandboxed code cannot even read it.
        "PID1 b\"PermissionError(13, 'Permission denied')\"",
    ], body
    shell = run(api, "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; env", language="bash")
    assert "PATH=" in shell["stdout"], shell  # the reads did happen
    for text in (shell["stdout"], shell["stderr"]):
        assert SECRET_NAME not in text and SECRET_VALUE not in text


# -- resource bombs --------------------------------------------------------------------------

BOMBS = {
    # bash returns as soon as the first generation is backgrounded; the bomb then dies with
    # the sandbox's pid namespace, so "success" is a correct ending for this one.
    "bash": ":(){ :|:& };:",
    # ...so also keep the main process alive while the bomb presses against pids.max.
    "bash-held": ":(){ :|:& };:\nsleep 30",
    "python": """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
}


@pytest.mark.parametrize("language", sorted(BOMBS))
@pytest.mark.slow
def test_fork_bomb_ends(api: httpx.Client, language: str) -> None:
    started = time.monotonic()
    body = run(api, BOMBS[language], language=language.removesuffix("-held"), timeout=5)
    assert time.monotonic() - started < 20
    if language == "bash":
        assert body["status"] in ("timeout", "failed", "success"), body
    else:
        assert body["status"] in ("timeout", "failed"), body
        assert body["success"] is False


MEMORY_BOMBS = {
    "python": """
        chunks = []
        while True:
            chunks.append(bytearray(10 * 1024 * 1024))
        """,
    "node": """
        const kept = [];
        while (true) kept.push(Buffer.alloc(50e6, 1));  // filled: calloc'd zero pages cost nothing
        """,
}


@pytest.mark.parametrize("language", sorted(MEMORY_BOMBS))
@pytest.mark.slow
def test_memory_bomb_is_oom(api: httpx.Client, language: str) -> None:
    body = run(api, MEMORY_BOMBS[language], language=language, timeout=20)
    assert body["status"] == "oom", body
    assert body["error"] == "memory_limit_exceeded", body
    assert body["success"] is False


def test_output_flood_is_cut(api: httpx.Client) -> None:
    started = time.monotonic()
    body = run(api, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", timeout=30)
    assert time.monotonic() - started < 10
    assert body["error"] == "output_limit_exceeded", {
        k: v for k, v in body.items() if k != "stdout"
    }
    assert len(body["stdout"]) == OUTPUT_LIMIT


def test_tmp_fill_stops_at_tmpfs_size(api: httpx.Client) -> None:
    body = run(
        api,
        """
        import errno
        written = 0
        chunk = b"x" * (1 << 20)
        try:
            with open("/tmp/fill", "wb") as f:
                while True:
                    written += f.write(chunk)
                    f.flush()
        except OSError as e:
            print("ERR", errno.errorcode[e.errno], written)
        """,
        timeout=30,
    )
    if body["status"] == "oom":
        return
    err, name, written = body["stdout"].split()
    assert (err, name) == ("ERR", "ENOSPC"), body
    assert int(written) <= TMP_LIMIT


def test_big_file_in_home_hits_file_size_limit(server: Server, api: httpx.Client) -> None:
    thread = new_thread()
    body = run(
        api,
        f"""
        import errno
        try:
            with open("big", "wb") as f:
                f.seek({FILE_SIZE_LIMIT})  # sparse: no gigabyte is written to the host disk
                f.write(b"x")
                f.flush()
            print("WROTE")
        except OSError as e:
            print("ERR", errno.errorcode[e.errno])
        for line in open("/proc/self/limits"):
            if line.startswith("Max file size"):
                print("LIMIT", line.split()[3])
        """,
        thread_id=thread,
    )
    assert body["stdout"].splitlines() == ["ERR EFBIG", f"LIMIT {FILE_SIZE_LIMIT}"], body
    assert (thread_home(server, thread) / "big").stat().st_size <= FILE_SIZE_LIMIT


# -- processes that outlive the execution ----------------------------------------------------


@pytest.mark.slow
def test_background_processes_die_with_the_execution(server: Server, api: httpx.Client) -> None:
    thread = new_thread()
    shell = run(
        api,
        """
        (sleep 3; echo late > /home/baponi/late.txt) & disown
        nohup sh -c 'sleep 3; touch /home/baponi/late2' >/dev/null 2>&1 &
        setsid sh -c 'sleep 3; touch /home/baponi/late3' >/dev/null 2>&1 < /dev/null &
        echo returned
        """,
        language="bash",
        thread_id=thread,
    )
    assert shell["stdout"] == "returned\n" and shell["success"], shell
    daemon = run(
        api,
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                devnull = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                time.sleep(3)
                open("/home/baponi/late4", "w").write("late")
            os._exit(0)
        os.wait()
        print("returned")
        """,
        thread_id=thread,
    )
    assert daemon["stdout"] == "returned\n" and daemon["success"], daemon
    assert_no_sandbox_processes(server)
    time.sleep(5)
    body = run(api, "import os; print(sorted(os.listdir('.')))", thread_id=thread)
    assert body["stdout"] == "[]\n", body


# -- seccomp ---------------------------------------------------------------------------------

SECCOMP_CASES = {
    "ptrace": (
        "python",
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.syscall(101, 16, 1, 0, 0)  # ptrace(PTRACE_ATTACH, 1)\nprint('survived')",
    ),
    # exec: bash becomes the command, so the program itself is what the filter kills.
    "unshare-cli": ("bash", "exec unshare -Ur true"),
    "unshare-syscall": (
        "python",
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.syscall(272, 0x10000000)  # unshare(CLONE_NEWUSER)\nprint('survived')",
    ),
    "mount": (
        "python",
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)\nprint('survived')",
    ),
}


@pytest.mark.parametrize("case", sorted(SECCOMP_CASES))
def test_dangerous_syscalls_are_killed(api: httpx.Client, case: str) -> None:
    language, code = SECCOMP_CASES[case]
    body = run(api, code, language=language, timeout=10)
    assert body["status"] == "seccomp", body
    assert body["error"] == "security_policy_violation", body
    assert "survived" not in body["stdout"]


# The ending is the program's own wait status: an exit with 159 is no violation.
EXIT_159 = {
    "python": "import sys; sys.exit(159)",
    "bash": "exit 159",
    "node": "process.exit(159)",
    # a child killed by the filter, and the script that goes on and exits as it chooses
    "bash-child": 'unshare -Ur true; echo "child: $?"; exit 159',
}


@pytest.mark.parametrize("case", sorted(EXIT_159))
def test_exit_159_is_a_failure_not_seccomp(api: httpx.Client, case: str) -> None:
    body = run(api, EXIT_159[case], language=case.removesuffix("-child"), timeout=10)
    assert body["status"] == "failed", body
    assert body["exit_code"] == 159, body
    assert body["error"] is None, body
    if case == "bash-child":
        assert body["stdout"] == "child: 159\n", body


def test_sigsys_death_is_seccomp_with_its_exit_code(api: httpx.Client) -> None:
    body = run(api, "import os, signal; os.kill(os.getpid(), signal.SIGSYS)", timeout=10)
    assert body["status"] == "seccomp", body
    assert body["exit_code"] == 159, body


@pytest.mark.slow
def test_kill_all_does_not_reach_other_sandboxes(api: httpx.Client, server: Server) -> None:
    results: dict[str, Any] = {}

    def victim() -> None:
        with server.client() as client:
            results["victim"] = run(
                client,
                "import time\ntime.sleep(2)\nprint('alive')",
                thread_id=new_thread(),
                timeout=20,
            )
            results["victim_done"] = time.monotonic()

    other = threading.Thread(target=victim)
    other.start()
    time.sleep(0.7)
    attacker = run(
        api,
        """
        import errno, os, signal
        try:
            os.kill(-1, signal.SIGKILL)
            print("SENT")
        except OSError as e:
            print("ERR", errno.errorcode[e.errno])
        """,
        thread_id=new_thread(),
    )
    attacker_done = time.monotonic()
    other.join(timeout=30)
    assert attacker["stdout"].strip() in ("SENT", "ERR ESRCH"), attacker
    assert results["victim"]["success"] is True and results["victim"]["stdout"] == "alive\n", (
        results
    )
    assert attacker_done < results["victim_done"]  # the kill really ran while the victim ran


# -- privileges ------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_new_privs_seccomp_and_unprivileged_uid(server: Server, api: httpx.Client) -> None:
    thread = new_thread()
    body = run(
        api,
        """
        import os
        lines = open("/proc/self/status").read().splitlines()
        status = dict(line.split(":\\t", 1) for line in lines)
        print("NNP", status["NoNewPrivs"].strip(), "SECCOMP", status["Seccomp"].strip())
        print("UID", os.getuid(), os.geteuid(), os.getgid())
        try:
            os.setuid(0)
            print("SETUID OK")
        except OSError as e:
            print("SETUID", e.errno)
        open("owned.txt", "w").write("mine")
        """,
        thread_id=thread,
    )
    # EINVAL: uid 0 is not even mapped in the sandbox's user namespace; EPERM: no CAP_SETUID.
    assert body["stdout"].splitlines()[:2] == ["NNP 1 SECCOMP 2", "UID 1000 1000 1000"], body
    assert body["stdout"].splitlines()[2:] in (["SETUID 1"], ["SETUID 22"]), body
    su = run(api, "su -c id root </dev/null; id -u", language="bash", timeout=10)
    assert su["stdout"].strip().splitlines()[-1] == "1000", su
    created = thread_home(server, thread) / "owned.txt"
    assert created.stat().st_uid == STORAGE_UID
    assert created.parent.stat().st_uid == STORAGE_UID


def test_host_devices_absent(api: httpx.Client) -> None:
    body = run(
        api,
        "import os\n"
        "paths = ('/dev/vda', '/dev/kmsg', '/dev/vsock', '/dev/mem', '/sys')\n"
        "print([os.path.exists(p) for p in paths])",
    )
    assert body["stdout"] == "[False, False, False, False, False]\n", body


def test_planted_symlinks_resolve_inside_the_sandbox(server: Server, api: httpx.Client) -> None:
    thread = new_thread()
    database = str(server.home / "baponi.db")
    plant = run(
        api,
        f"""
        import os
        os.symlink("/etc/shadow", "leak")
        os.symlink({database!r}, "dbleak")
        os.symlink("/proc/1/root/etc/shadow", "procleak")
        print(sorted(os.listdir(".")))
        """,
        thread_id=thread,
    )
    assert plant["stdout"] == "['dbleak', 'leak', 'procleak']\n", plant
    body = run(
        api,
        """
        import errno
        for name in ("leak", "dbleak", "procleak"):
            try:
                print(name, "READ", open(name, "rb").read()[:64])
            except OSError as e:
                print(name, errno.errorcode[e.errno])
        """,
        thread_id=thread,
    )
    lines = body["stdout"].splitlines()
    assert lines[:2] == ["leak ENOENT", "dbleak ENOENT"], body
    assert lines[2] in ("procleak ENOENT", "procleak EACCES"), body
    assert "SQLite" not in body["stdout"]
