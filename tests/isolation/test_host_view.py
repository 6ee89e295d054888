"""What a sandbox can see of the host (/proc, /sys) and which sockets it may open, through
the HTTP API against a real server.

Every file under /proc and /sys that a sandbox can read is listed and held against the
allowlist in ``readable_proc.txt``: a file that becomes readable (a new kernel, a mount
option dropped) fails the test until someone has judged it and added it there. The
contents of what is readable are then searched for what would identify the server: its
home, the organisation's id, the host's boot line, the server's pid.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from tests.harness import ERRNO_PROBE, Server, on_both_paths, org_id_of, unique
from tests.isolation.test_escapes import run

server = on_both_paths()  # every test: without the pool and with it

ALLOWLIST = Path(__file__).with_name("readable_proc.txt")
WALK_S = 30  # the walk stops there and says so; it takes about a second

# Runs as the sandboxed program. Lists every regular file under /proc and /sys that can be
# read, walking directories with lstat (no link is followed: /proc/self, fd/ and ns/
# entries are links). Numbers that differ from run to run are named by role: this
# process's pid is "self", the init's is "1" (any other pid is reported apart), thread ids
# "<tid>", descriptor and interrupt numbers "<n>". Then it searches what it read for the
# needles, given reversed so that this code never holds them in the clear.
WALK = """
import json, os, re, stat, time
NEEDLES = [n[::-1].encode() for n in REVERSED]
PID = re.compile(rb"(?<![0-9])" + SERVER_PID.encode() + rb"(?![0-9])")
own = str(os.getpid())
deadline = time.monotonic() + WALK_S
readable, others, hits, pid_hits, mountinfo = set(), set(), set(), set(), set()

def name(path):
    parts = path.split("/")
    for i in range(2, len(parts)):
        if parts[i].isdigit():
            if parts[i - 1] == "proc":
                parts[i] = "self" if parts[i] == own else parts[i]
                if parts[i] not in ("self", "1"):
                    others.add(parts[i])
            elif parts[i - 1] == "task":
                parts[i] = "<tid>"
            elif parts[i - 1] in ("fd", "fdinfo", "map_files", "irq"):
                parts[i] = "<n>"
    return "/".join(parts)

def read(path):  # up to 1 MiB; /proc hands its files out a page per read
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        data = b""
        while len(data) < 1 << 20 and (chunk := os.read(fd, 1 << 16)):
            data += chunk
        return data
    finally:
        os.close(fd)

stack = [top for top in ("/proc", "/sys") if os.path.isdir(top)]
while stack and time.monotonic() < deadline:
    directory = stack.pop()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        continue
    for entry in entries:
        try:
            mode = os.lstat(entry.path).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode):
            stack.append(entry.path)
            continue
        if not stat.S_ISREG(mode):
            continue
        try:
            data = read(entry.path)
        except OSError:
            continue
        readable.add(name(entry.path))
        leaf = entry.name
        for needle in NEEDLES:
            if needle not in data:
                continue
            if leaf == "mountinfo":  # known: the root of a mount (below)
                for line in data.splitlines():
                    if needle in line:
                        mountinfo.add(line.split()[4].decode())
            else:
                hits.add(entry.path)
        if leaf in ("cgroup", "mountinfo", "environ", "cmdline", "status") and PID.search(data):
            pid_hits.add(entry.path)
print(json.dumps({
    "complete": not stack,
    "sys": os.path.exists("/sys"),
    "readable": sorted(readable),
    "others": sorted(others),
    "hits": sorted(hits),
    "pid_hits": sorted(pid_hits),
    "mountinfo_targets": sorted(mountinfo),
}))
"""


def walk(api: httpx.Client, needles: list[str], server_pid: int, thread: str) -> dict[str, Any]:
    code = (
        f"REVERSED = {[n[::-1] for n in needles]!r}\nSERVER_PID = {str(server_pid)!r}\n"
        f"WALK_S = {WALK_S}\n" + WALK
    )
    body = run(api, code, thread_id=thread, timeout=WALK_S + 20)
    assert body["success"], body
    report: dict[str, Any] = json.loads(body["stdout"])
    assert report["complete"], "the walk ran out of time"
    return report


def allowlist() -> set[str]:
    lines = ALLOWLIST.read_text().splitlines()
    return {line for line in lines if line and not line.startswith("#")}


def host_cmdline_needles() -> list[str]:
    """The host's boot line, and its distinctive options (``name=value``, 12+ chars)."""
    line = Path("/proc/cmdline").read_text().strip()
    return [line, *(word for word in line.split() if "=" in word and len(word) >= 12)]


def test_only_allowlisted_proc_files_are_readable_and_none_names_the_host(
    server: Server, api: httpx.Client
) -> None:
    thread = unique("view")  # a thread home: a disk directory of the server's, mounted
    assert run(api, "open('made', 'w').write('x')", thread_id=thread)["success"]
    org = org_id_of(server.home)
    needles = [str(server.home), org, f"srv-{server.process.pid}", *host_cmdline_needles()]
    report = walk(api, needles, server.process.pid, thread)

    readable = set(report["readable"])
    # The walk read what runtimes need (so it did run), and none of the masked files.
    assert {"/proc/meminfo", "/proc/cpuinfo", "/proc/stat", "/proc/self/status"} <= readable
    assert (
        not {"/proc/cmdline", "/proc/kallsyms", "/proc/locks", "/proc/sys/kernel/random/boot_id"}
        & readable
    )
    assert not any(path.startswith(("/proc/bus/", "/proc/fs/")) for path in readable)
    unexpected = sorted(readable - allowlist())
    assert unexpected == [], f"readable and not in {ALLOWLIST.name}: {unexpected}"
    assert report["sys"] is False
    assert report["others"] == []  # no process but the init and this one

    assert report["hits"] == []  # no home path, org id, boot line or server cgroup
    assert report["pid_hits"] == []
    # The kernel shows where a bound directory lies in its filesystem (the fourth field
    # of mountinfo): a thread home is the root of a filesystem of its own, so nothing.
    assert report["mountinfo_targets"] == []


def test_proc_self_cgroup_is_the_root_of_the_sandbox_s_own(api: httpx.Client) -> None:
    body = run(api, "print(open('/proc/self/cgroup').read(), end='')")
    assert body["success"], body
    lines = body["stdout"].splitlines()
    assert lines and all(re.fullmatch(r"\d+:[\w,=]*:/", line) for line in lines), body


# -- sockets ---------------------------------------------------------------------------------

ALLOWED_FAMILIES = {1, 2, 10, 16}  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK (route only)

SOCKETS = (
    ERRNO_PROBE
    + """
import socket
def opened(call, family):
    kind = socket.SOCK_RAW if family == 16 else socket.SOCK_STREAM  # netlink is datagrams
    made = call(family, kind)
    for s in made if isinstance(made, tuple) else (made,):
        s.close()
refused = {}
for family in range(46):
    for call in (socket.socket, socket.socketpair):
        refused[f"{call.__name__} {family}"] = attempt(lambda: opened(call, family))
pair = socket.socketpair()
pair[0].sendall(b"ping")
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
client = socket.create_connection(listener.getsockname())
peer, _ = listener.accept()
client.sendall(b"pong")
print(json.dumps({
    "refused": refused,
    "unix": pair[1].recv(4).decode(),
    "inet": peer.recv(4).decode(),
    "inet6": attempt(lambda: socket.socket(socket.AF_INET6).bind(("::1", 0))),
    "route": attempt(lambda: socket.socket(16, socket.SOCK_RAW, 0).close()),
    "netlink_audit": attempt(lambda: socket.socket(16, socket.SOCK_RAW, 9)),
    "raw": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)),
    "raw6": attempt(lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, 58)),
    "sock_packet": attempt(lambda: socket.socket(socket.AF_INET, 10, 0x0300)),
    "interfaces": [name for _, name in socket.if_nameindex()],
}))
"""
)


def test_only_unix_inet_and_route_netlink_sockets_open(api: httpx.Client) -> None:
    body = run(api, SOCKETS)
    assert body["success"], body
    seen = json.loads(body["stdout"])
    refused = seen.pop("refused")
    for family in range(46):
        for call in ("socket", "socketpair"):
            result = refused[f"{call} {family}"]
            if family not in ALLOWED_FAMILIES:
                assert result == "EAFNOSUPPORT", (call, family, result)
    assert refused["socket 1"] == refused["socketpair 1"] == "ok"
    assert refused["socket 2"] == refused["socket 10"] == "ok"
    assert seen == {
        "unix": "ping",
        "inet": "pong",  # on the sandbox's own loopback
        "inet6": "ok",
        "route": "ok",
        "netlink_audit": "EAFNOSUPPORT",
        "raw": "EPERM",
        "raw6": "EPERM",
        "sock_packet": "EPERM",
        "interfaces": ["lo"],
    }


# -- /dev ------------------------------------------------------------------------------------

DEV = (
    ERRNO_PROBE
    + """
def fill(path):
    written = 0
    try:
        with open(path, "wb") as f:
            while True:
                written += f.write(b"x" * (1 << 20))
                f.flush()
    except OSError as e:
        return [errno.errorcode[e.errno], written]
print(json.dumps({
    "dev": attempt(lambda: open("/dev/planted", "w")),
    "mkdir": attempt(lambda: os.mkdir("/dev/d")),
    "null": attempt(lambda: open("/dev/null", "w").write("x")),
    "shm": fill("/dev/shm/fill"),
}))
"""
)
SHM_LIMIT = 64 << 20


def test_dev_is_read_only_and_dev_shm_bounded(api: httpx.Client) -> None:
    body = run(api, DEV, timeout=30)
    assert body["success"], body
    seen = json.loads(body["stdout"])
    assert (seen["dev"], seen["mkdir"], seen["null"]) == ("EROFS", "EROFS", "ok"), seen
    assert seen["shm"][0] == "ENOSPC" and 0 < seen["shm"][1] <= SHM_LIMIT, seen
