"""Each live sandbox runs as a host uid of its own, so per-user kernel limits are not
shared between tenants; homes stay usable across runs that have different uids.

The server of this module is started with low soft limits for processes and pending
signals (inherited by bwrap, they bound every uid's count on the host), so one sandbox
can reach them quickly; the other limits are the host's own. A sandbox cannot see its
host uid (bwrap nests a second user namespace), so every program here ends as
``sleep <marker>`` for a moment, and the test reads the uid of that process from the
host's ``/proc``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from baponi_core._sandbox.uids import CLAIMS
from tests.harness import (
    Server,
    marker_processes,
    org_key,
    own_uids,
    sleep_marker,
    start_server,
    stop_server,
    unique,
    wait_until,
)

pytestmark = pytest.mark.slow

LOW_LIMITS = {resource.RLIMIT_NPROC: 40, resource.RLIMIT_SIGPENDING: 64}
HOLD_S = 6  # how long a sandbox that holds a resource lives on

# Python run in a sandbox: exhaust one per-user resource (print how many it got and
# why it stopped, and go on holding them as ``sleep <marker>``), or try to get one
# (print "ok" or the error).
PRELUDE = """
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
def why():
    return os.strerror(ctypes.get_errno())
class MqAttr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_long) for n in ("flags", "maxmsg", "msgsize", "cur", *"abcd")]
QUEUE = MqAttr(0, 10, 8192, 0)
def queue(name):
    return libc.mq_open(name.encode(), os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(QUEUE))
def child():
    try:
        pid = os.fork()
    except BlockingIOError:
        return False
    if pid == 0:
        signal.pause()
    return True
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMIN})
def queued():
    return libc.sigqueue(os.getpid(), signal.SIGRTMIN, ctypes.c_void_p(0)) == 0
"""
RESOURCES = {
    "inotify": ("libc.inotify_init1(0) >= 0", "Too many open files"),
    "nproc": ("child()", "EAGAIN"),
    "sigpending": ("queued()", "Resource temporarily unavailable"),
    "msgqueue": ("queue(f'/q{n}') >= 0", "Too many open files"),
}


def exhaust(resource_name: str, marker: str) -> str:
    take, _ = RESOURCES[resource_name]
    return (
        PRELUDE
        + textwrap.dedent(f"""
        n = 0
        while {take}:
            n += 1
        print(n, "EAGAIN" if {resource_name!r} == "nproc" else why(), flush=True)
        """)
        + then(marker)
    )


def probe(resource_name: str, marker: str) -> str:
    take, _ = RESOURCES[resource_name]
    return PRELUDE + f"n = 'probe'\nprint('ok' if {take} else why(), flush=True)\n" + then(marker)


def then(marker: str) -> str:
    """Python that ends its program as ``sleep <marker>``."""
    return f"import os\nos.execv('/bin/sleep', ['sleep', {marker!r}])\n"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own whose sandboxes start with the ``LOW_LIMITS``."""
    saved = {which: resource.getrlimit(which) for which in LOW_LIMITS}
    try:
        for which, soft in LOW_LIMITS.items():
            resource.setrlimit(which, (soft, saved[which][1]))
        running = start_server(
            tmp_path_factory.mktemp("uids"), "--sandbox-uids", f"{OWN_UIDS.first}-{OWN_UIDS.last}"
        )
    finally:
        for which, limits in saved.items():
            resource.setrlimit(which, limits)
    yield running
    stop_server(running)


OWN_UIDS = own_uids(0)


def execute(server: Server, key: str, code: str, **options: Any) -> dict[str, Any]:
    body = {"code": code, "language": "python", "timeout": 30, **options}
    with server.client(key) as client:
        response = client.post("/v1/sandbox/execute", json=body, timeout=60)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


@contextlib.contextmanager
def running(server: Server, key: str, code: str, marker: str, **options: Any) -> Iterator[Run]:
    """Run ``code``, which ends as ``sleep <marker>``, in the background; yield once that
    sleep runs (or the run is over), then wait for its result."""
    run = Run()

    def execute_it() -> None:
        run.result = execute(server, key, code, **options)

    runner = threading.Thread(target=execute_it)
    runner.start()
    try:
        wait_until(lambda: host_uids(marker) or not runner.is_alive(), 20, "the sandbox to run")
        found = host_uids(marker)
        assert len(found) <= 1, found
        run.uid = found.pop() if found else None
        yield run
    finally:
        runner.join()


@dataclass
class Run:
    uid: int | None = None  # its host uid, as read while it ran
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def stdout(self) -> list[str]:
        assert self.result.get("exit_code") == 0, self.result
        return str(self.result["stdout"]).splitlines()


def host_uids(marker: str) -> set[int]:
    """The real host uids of the processes whose command line holds ``marker``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if marker.encode() in cmdline and b"sleep" in cmdline.split(b"\0")[0]:
            for line in status.splitlines():
                if line.startswith("Uid:"):
                    found.add(int(line.split()[1]))
    return found


def claimed(uid: int) -> bool:
    """Whether some server holds ``uid`` for a sandbox (its claim is locked)."""
    try:
        fd = os.open(CLAIMS / str(uid), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def uid_processes(uid: int) -> list[str]:
    """Processes of real uid ``uid``, by their status (the files of a non-dumpable
    process, such as a sandbox's init, belong to root)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            status = (entry / "status").read_text() if entry.name.isdigit() else ""
            if f"\nUid:\t{uid}\t" in status:
                found.append(entry.name)
    return found


@pytest.mark.parametrize("resource_name", list(RESOURCES))
def test_a_sandbox_exhausting_a_per_user_limit_does_not_starve_another(
    limited: Server, resource_name: str
) -> None:
    one, other = org_key(limited, "uids-one"), org_key(limited, "uids-other")
    full, probing = sleep_marker(HOLD_S), sleep_marker(1)
    with running(limited, one, exhaust(resource_name, full), full) as holder:
        assert holder.uid in OWN_UIDS
        with running(limited, other, probe(resource_name, probing), probing) as prober:
            assert prober.uid in OWN_UIDS
            assert prober.uid != holder.uid
        assert prober.stdout == ["ok"]
    got, reason = holder.stdout[0].split(" ", 1)
    assert reason == RESOURCES[resource_name][1], holder.result
    if resource_name == "inotify":  # the host's per-user limit, not the descriptor limit
        assert int(got) == int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    else:
        assert int(got) > 0, holder.result


def test_concurrent_sandboxes_have_their_own_uids_given_back_once_gone(limited: Server) -> None:
    one, other = org_key(limited, "uids-one"), org_key(limited, "uids-other")
    long, short = sleep_marker(HOLD_S), sleep_marker(1)
    with running(limited, one, then(long), long) as holder:
        assert holder.uid is not None and claimed(holder.uid)
        with running(limited, other, then(short), short) as second:
            assert second.uid not in (None, holder.uid)
    held = holder.uid
    wait_until(lambda: not claimed(held), 10, f"uid {held} to be given back")
    assert uid_processes(held) == []
    assert not marker_processes(long)
    again = sleep_marker(1)
    with running(limited, other, then(again), again) as later:
        assert later.uid is not None and later.uid <= held  # the lowest free: reused


def test_thread_home_files_work_across_runs_with_other_uids(limited: Server) -> None:
    key, thread = org_key(limited, "uids-one"), unique("uids")
    writes = (
        "open('/home/baponi/notes.txt', 'w').write('first\\n')\n"
        "import os; os.mkdir('/home/baponi/made')\n"
    )
    first_marker = sleep_marker(1)
    with running(
        limited, key, writes + then(first_marker), first_marker, thread_id=thread
    ) as first:
        assert first.uid is not None
    assert first.stdout == []
    used = first.uid
    # Hold the uid the first run had, so the next run of the thread gets another one.
    wait_until(lambda: not claimed(used), 10, f"uid {used} to be given back")
    long, short = sleep_marker(HOLD_S), sleep_marker(1)
    with running(limited, org_key(limited, "uids-other"), then(long), long) as holder:
        assert holder.uid == used
        updates = (
            "import os\nprint(open('/home/baponi/notes.txt').read().strip())\n"
            "open('/home/baponi/notes.txt', 'a').write('second\\n')\n"
            "open('/home/baponi/made/inner.txt', 'w').write('inner')\n"
            "st = os.stat('/home/baponi/notes.txt'); print(st.st_uid, st.st_gid, flush=True)\n"
        )
        with running(limited, key, updates + then(short), short, thread_id=thread) as second:
            assert second.uid not in (None, used)
    assert second.stdout == ["first", "1000 1000"]  # its own files, though another uid made them

    with limited.client(key) as api:  # the Files API reads them, and writes for the next run
        signed = api.post("/v1/files/download_url", json={"id": thread, "path": "notes.txt"})
        assert signed.status_code == 200, signed.text
        assert httpx.get(signed.json()["url"], timeout=10).content == b"first\nsecond\n"
        grant = api.post(
            "/v1/files/upload_url",
            json={"id": thread, "path": "made/uploaded.txt", "content_length": 4},
        )
        assert grant.status_code == 200, grant.text
        headers = {h["name"]: h["value"] for h in grant.json()["headers"]}
        put = httpx.put(grant.json()["url"], content=b"from", headers=headers, timeout=10)
        assert put.status_code == 200, put.text
    third = execute(
        limited,
        key,
        "print(open('/home/baponi/made/uploaded.txt').read())\n"
        "open('/home/baponi/made/uploaded.txt', 'a').write(' the API')\n"
        "print(open('/home/baponi/made/uploaded.txt').read())\n",
        thread_id=thread,
    )
    assert third["stdout"].splitlines() == ["from", "from the API"], third
