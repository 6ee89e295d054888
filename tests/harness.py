"""What tests (and benchmarks) share, in one place:

- processes: real ``baponi serve`` servers on loopback (``start_server``, ``stop_server``,
  ``Server``), all on one runtimes directory (``shared_runtimes``, ``import_runtime``),
  the operator CLI (``cli``, ``run_cli``), ``free_port``, ``marker_processes``,
  a sandbox runtime of this process on a thread of its own (``runtime_on_a_thread``);
- waiting: ``wait_until`` and its async twin ``wait_until_async`` (one signature);
- naming: ``unique`` (threads, organisations, slugs, probes), ``sleep_marker`` (a sleep
  length to find a sandboxed process by);
- asserting: ``assert_error`` (the standard ``{"error", "message"}`` body), ``text_of``
  (the text of an MCP tool result);
- clients and organisations: ``Server.client`` (HTTP), ``Server.sdk`` (the official SDK),
  ``connect`` (a raw socket) and ``closed_by_server``,
  ``Server.new_key``, ``org_key`` (a key of another organisation), ``files_call`` (one raw
  Files API request);
- reading a home's records through the store (``opened_store``, ``read_store``, ``org_id_of``,
  ``execution_of``, ``stored_events``), and the few raw queries the Store protocol has no
  method for yet (``tagged_execution``, ``execution_count``, ``expire_events``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import httpx

from baponi_core._records import ExecutionStatus
from baponi_core._sandbox.uids import UidRange
from baponi_http._errors import HTTP_CODES

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

    from baponi_core._records import Execution
    from baponi_core._sandbox import SandboxRuntime
    from baponi_core._store import Store

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent  # the repository
BAPONI = [sys.executable, "-m", "baponi_cli"]
BAPONI_MCP = str(Path(sys.executable).with_name("baponi-mcp"))  # the console script
SERVER_SECRET = "server-secret-do-not-leak"  # in every test server's environment, never a sandbox's
TERMINAL = set(ExecutionStatus) - {ExecutionStatus.QUEUED, ExecutionStatus.RUNNING}
# Python run in a sandbox: attempt(action) gives "ok" or the errno's name it failed with.
ERRNO_PROBE = """
import errno, json, os
def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
"""
POLL_S = 0.05  # how often wait_until looks again
# The runtimes directory every test server uses unless a test gives its own: the built
# default runtime image as `default` (default_image), or the host runtime standing in.
TEST_RUNTIMES = Path(
    os.environ.get("BAPONI_TEST_RUNTIMES") or f"/tmp/baponi-test-runtimes-{os.getuid()}"
)
_runtimes_ready = False


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the operator CLI against ``home`` and return whatever happened (no check)."""
    return subprocess.run(
        [*BAPONI, *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def cli(home: Path, *args: str) -> str:
    """Run the operator CLI against ``home``; it must succeed. Its stdout, stripped."""
    done = subprocess.run(
        [*BAPONI, *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def shared_runtimes() -> Path:
    """:data:`TEST_RUNTIMES`, with a `default` runtime in it: prepared once per process (and
    under a lock, for test runs side by side); the host runtime unless one is built."""
    global _runtimes_ready
    if not _runtimes_ready:
        TEST_RUNTIMES.mkdir(parents=True, exist_ok=True)
        with open(TEST_RUNTIMES.with_name(TEST_RUNTIMES.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            from baponi_core._runtimes import Runtimes

            image = default_image()
            source = "host:" if image is None else f"oci:{image}"
            entries = Runtimes(TEST_RUNTIMES).entries()
            found = next((e.description.source for e in entries if e.name == "default"), None)
            if found != source:
                import_runtime(TEST_RUNTIMES, "default", source, "--replace")
        _runtimes_ready = True
    return TEST_RUNTIMES


def default_image() -> Path | None:
    """The default runtime's OCI layout as set-up builds it for this checkout's pins
    (``scripts/runtime/build.sh --where``), or None when it is not built. ``scripts/setup.sh
    test`` builds it and names it in ``BAPONI_TEST_IMAGE``: then it must be there."""
    named = os.environ.get("BAPONI_TEST_IMAGE")
    where = (
        named
        or subprocess.run(
            [Path(__file__).parent.parent / "scripts/runtime/build.sh", "--where"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    layout = Path(where)
    if (layout / "index.json").is_file():
        return layout
    if named:
        raise RuntimeError(f"BAPONI_TEST_IMAGE={named} holds no OCI layout")
    return None


def import_runtime(runtimes: Path, name: str, source: str, *more: str) -> str:
    """``baponi runtimes import`` into ``runtimes``; it must succeed. What it printed."""
    done = subprocess.run(
        [*BAPONI, "runtimes", "import", name, source, "--runtimes", str(runtimes), *more],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@dataclass
class Server:
    home: Path
    url: str
    key: str
    process: subprocess.Popen[bytes]

    @property
    def threads(self) -> Path:
        """The thread homes as the server sees them: each is a filesystem of its own,
        mounted in the server's private mount namespace while in use (and for a while
        after), which ``/proc/<pid>/root`` reaches."""
        return self.seen(self.home / "threads")

    @property
    def volumes(self) -> Path:
        """The managed volumes as the server sees them (as root, each a filesystem of its
        own too, mounted the same way)."""
        return self.seen(self.home / "volumes")

    def seen(self, path: Path) -> Path:
        """``path`` in the server's mount namespace."""
        return Path(f"/proc/{self.process.pid}/root") / str(path).lstrip("/")

    def client(self, key: str | None = None) -> httpx.Client:
        """Plain HTTP with a Bearer key (the server's own by default)."""
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key or self.key}"},
            timeout=60,
        )

    def sdk(self, key: str | None = None):  # type: ignore[no-untyped-def]
        """The official SDK with a key (the server's own by default), without retries."""
        from baponi import Baponi

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # plain http on loopback
            return Baponi(api_key=key or self.key, base_url=self.url, max_retries=0)

    def new_key(self, *args: str) -> str:
        return cli(self.home, "keys", "create", *args)

    @property
    def log(self) -> str:
        return Path(f"{self.home}.log").read_text(errors="replace")


def connect(server: Server, receive_buffer: int | None = None) -> socket.socket:
    """A raw TCP connection to ``server`` (for what an HTTP client would not send)."""
    sock = socket.socket()
    if receive_buffer is not None:  # before connecting, so that the window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    return sock


def closed_by_server(sock: socket.socket, within: float) -> float:
    """Seconds until the server closed ``sock`` (whatever it sent before)."""
    started = time.monotonic()
    sock.settimeout(within)
    while sock.recv(4096):
        pass
    return time.monotonic() - started


COLD = ("--pool", "0")  # every sandbox set up at its request
POOLED = ("--pool", "python=2,node=1,bash=1")  # prepared ahead, as `baponi serve` does


def start_server(home: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    """``baponi serve`` on a free loopback port with extra ``args``; its log goes to
    ``<home>.log`` (a pipe nobody reads would stall a chatty server). Without a
    ``--pool`` among ``args`` it has none (``COLD``): tests that count sandboxes, uids or
    processes count only their own; ``POOLED`` gives it the default pool."""
    if "--pool" not in args:
        args = (*args, *COLD)
    port = free_port()
    environ = {**os.environ, "BAPONI_TEST_SECRET": SERVER_SECRET, **(env or {})}
    if "--runtimes" not in args and "BAPONI_RUNTIMES" not in environ:
        args = (*args, "--runtimes", str(shared_runtimes()))
    log = open(f"{home}.log", "ab")  # noqa: SIM115 (the child keeps it)
    process = subprocess.Popen(
        [*BAPONI, "serve", "--home", str(home), "--port", str(port), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=environ,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {Path(f'{home}.log').read_text()}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("server did not become ready")
    return Server(
        home=home, url=url, key=cli(home, "keys", "create", "--name", "tests"), process=process
    )


def on_both_paths() -> Any:
    """A ``server`` fixture for a test module whose every test runs on both paths: the
    session's server without a pool (``cold``) and the one with it (``pooled``).
    Assign it in the module: ``server = on_both_paths()``."""
    import pytest

    @pytest.fixture(scope="session", params=["cold", "pooled"])
    def server(request: pytest.FixtureRequest) -> Server:
        chosen: Server = request.getfixturevalue(f"{request.param}_server")
        return chosen

    return server


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def marker_processes(marker: str) -> list[bytes]:
    """Command lines (argv joined by NUL) of host processes that mention ``marker``
    (sandboxed processes are visible on the host, so this proves whether they live).
    This process itself is left out."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # the process ended while we looked
            continue
        if marker.encode() in cmdline:
            found.append(cmdline)
    return found


def own_uids(part: int) -> UidRange:
    """A uid range no other server or runtime of the run takes from: ``part`` 0 or 1 of
    this pytest-xdist worker's own. For tests that count on which uid a sandbox gets
    next, which another worker's sandboxes would take."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    first = 200_000 + 2_000 * worker + 1_000 * part
    return UidRange(first, first + 999)


@contextlib.contextmanager
def runtime_on_a_thread(
    run: Path, shared: list[Path]
) -> Iterator[tuple[BlockingPortal, SandboxRuntime]]:
    """A ``SandboxRuntime`` of this test process, on a thread of its own (its mount
    namespace stays there): the portal to call it through, and the runtime."""
    from anyio.from_thread import start_blocking_portal

    from baponi_core._sandbox import SandboxRuntime
    from baponi_core._sandbox.libc import call

    pr_set_child_subreaper = 36
    with start_blocking_portal() as portal:
        opened = portal.wrap_async_context_manager(
            SandboxRuntime.open(run, shared, uids=own_uids(1))
        )
        try:
            with opened as runtime:
                yield portal, runtime
        finally:
            with contextlib.suppress(OSError):  # the runtime made this test process one
                call("prctl", pr_set_child_subreaper, 0, 0, 0, 0, what="prctl")


# --------------------------------------------------------------------------- waiting


def _timed_out(within: float, what: str | Callable[[], object]) -> AssertionError:
    said = what() if callable(what) else what
    return AssertionError(f"timed out after {within} s waiting for {said}")


def wait_until(
    check: Callable[[], T], within: float, what: str | Callable[[], object] = "the condition"
) -> T:
    """Call ``check`` until it returns something truthy, and return that. After ``within``
    seconds fail with an AssertionError naming ``what`` (a text, or a function giving one,
    for the state at the timeout)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(within, what)
        time.sleep(POLL_S)


async def wait_until_async(
    check: Callable[[], T], within: float, what: str | Callable[[], object] = "the condition"
) -> T:
    """``wait_until`` for async tests: sleeps without blocking the event loop."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(within, what)
        await anyio.sleep(POLL_S)


# --------------------------------------------------------------------------- naming


def unique(prefix: str = "t") -> str:
    """A name no other test uses: ``<prefix>-<12 hex digits>`` (a valid thread id, org
    name or metadata value)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def sleep_marker(seconds: int) -> str:
    """A sleep length of ``seconds`` and a bit that no other process on the host uses: run
    ``sleep <marker>`` and find the process by it (``marker_processes``)."""
    return f"{seconds}.{uuid.uuid4().int % 10**12:012d}"


# --------------------------------------------------------------------------- asserting

HOST_DETAILS = ("Traceback", "/threads/", "/baponi")  # never in an error message


def assert_error(
    response: httpx.Response, status: int, code: str | None = None, message: str | None = None
) -> str:
    """``status`` with exactly the standard error body, as JSON: ``{"error", "message"}``,
    the ``code`` (by default the one of ``status``), a non-empty message (``message`` when
    given) that shows no traceback or host path. Returns the message."""
    assert response.status_code == status, response.text
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == (code or HTTP_CODES[status]), body
    assert isinstance(body["message"], str) and body["message"], body
    assert not [part for part in HOST_DETAILS if part in body["message"]], body
    if message is not None:
        assert body["message"] == message, body
    return str(body["message"])


def text_of(result: Any) -> str:
    """The text of an MCP tool result: its first content block, which must be text."""
    from mcp.types import TextContent

    block = result.content[0]
    assert isinstance(block, TextContent), result.content
    return block.text


# --------------------------------------------------------------------------- clients


def org_key(server: Server, name: str, *create: str) -> str:
    """A new key of organisation ``name`` on ``server``, which is created first (with the
    ``create`` options of ``baponi orgs create``) unless it exists."""
    names = {line.split()[0] for line in cli(server.home, "orgs", "list").splitlines()}
    if name not in names:
        cli(server.home, "orgs", "create", name, *create)
    return server.new_key("--org", name)


def run_probe(script: Path, base: Path, *become: str) -> Any:
    """Run a sandbox probe ``script`` on ``base`` with this repository and its
    dependencies, as the user ``become`` (a command prefix such as ``setpriv``) makes
    it, or as ourselves; what it printed, as JSON."""
    site = sysconfig.get_paths()["purelib"]  # this interpreter's, with the dependencies
    done = subprocess.run(
        [*become, "/usr/bin/python3", str(script), str(base)],
        env={
            "PYTHONPATH": f"{ROOT}:{site}",
            "XDG_CACHE_HOME": str(base / "cache"),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def run_in_thread(
    api: httpx.Client, code: str, thread: str, timeout: int = 30
) -> dict[str, object]:
    """An inline execution of ``code`` in ``thread``, which must be answered (200)."""
    response = api.post(
        "/v1/sandbox/execute", json={"code": code, "thread_id": thread, "timeout": timeout}
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``where`` with ``options`` (root only), unmounted afterwards."""
    where.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def files_call(client: httpx.Client, action: str, **body: Any) -> httpx.Response:
    """One raw Files API request; ``action`` is list, upload_url, download_url or delete."""
    if action == "delete":
        return client.request("DELETE", "/v1/files", json=body, timeout=10)
    return client.post(f"/v1/files/{action}", json=body, timeout=10)


# --------------------------------------------------------------------------- the store


@asynccontextmanager
async def opened_store(home: Path) -> AsyncIterator[Store]:
    """The store of ``home``, as the server opens it (a second connection beside a
    running server is fine), closed afterwards."""
    from baponi_core._config import Settings
    from baponi_core._store import store_for

    store = store_for(Settings.at(home))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def read_store(home: Path, read: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``read`` on the store of ``home`` (from a test that is not async)."""

    async def reading() -> T:
        async with opened_store(home) as store:
            return await read(store)

    return anyio.run(reading)


def org_id_of(home: Path, name: str = "default") -> str:
    """The id of organisation ``name``, which must exist."""

    async def read(store: Store) -> str | None:
        org = await store.get_org(name)
        return None if org is None else org.id

    found = read_store(home, read)
    assert found is not None, f"no organisation {name}"
    return found


def execution_of(home: Path, trace_id: str, org: str = "default") -> Execution | None:
    """The stored record of ``trace_id`` in organisation ``org`` (None if there is none)."""

    async def read(store: Store) -> Execution | None:
        owner = await store.get_org(org)
        assert owner is not None, f"no organisation {org}"
        return await store.get_execution(owner.id, trace_id)

    return read_store(home, read)


def stored_events(home: Path, trace_id: str) -> list[dict[str, Any]]:
    """The stored (not yet expired) events of ``trace_id``, in order."""

    async def read(store: Store) -> list[str]:
        return await store.get_events(trace_id, 0, time.time())

    return [json.loads(event) for event in read_store(home, read)]


# What the Store protocol has no method for yet: executions found by their metadata,
# counted per organisation, and events made to expire now. Raw SQL on the home's SQLite
# file, kept here alone.


def _database(home: Path) -> sqlite3.Connection:
    from baponi_core._config import Settings

    return sqlite3.connect(Settings.at(home).database, timeout=10)


def _query(home: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with closing(_database(home)) as db, db:
        return db.execute(sql, params).fetchall()


def tagged_execution(home: Path, probe: str) -> tuple[str, str] | None:
    """(trace id, status) of the execution whose metadata holds ``probe`` (how a test finds
    an execution whose caller has not learnt its trace id: an inline or cancelled call)."""
    rows = _query(
        home, "SELECT trace_id, status FROM executions WHERE metadata LIKE ?", f"%{probe}%"
    )
    assert len(rows) <= 1, rows
    return (str(rows[0][0]), str(rows[0][1])) if rows else None


def execution_count(home: Path, org: str) -> int:
    """How many executions are recorded for the organisation of id ``org``."""
    return int(_query(home, "SELECT COUNT(*) FROM executions WHERE org_id = ?", org)[0][0])


def expire_events(home: Path, trace_id: str) -> int:
    """Make the stored events of ``trace_id`` expired (not yet purged); how many there were."""
    with closing(_database(home)) as db, db:
        return db.execute(
            "UPDATE execution_events SET expires_at = ? WHERE trace_id = ?",
            (time.time() - 1, trace_id),
        ).rowcount
