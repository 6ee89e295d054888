"""The sandbox's init (``agent.c``): its wire protocol, and the binary built from it.

The agent is pid 1 of every sandbox. It is statically linked, so that it runs on any root
filesystem, and built from the source next to this module on first use (:mod:`compiled`).
The messages are described in ``agent.c``; this side encodes requests and decodes, as
hostile input, what the agent reports.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from baponi_core._sandbox import compiled

PROTOCOL = 1
SOURCE = Path(__file__).with_name("agent.c")
MAX_MESSAGE = 256 * 1024  # the agent's receive buffer
MAX_STRINGS = 8192  # argv entries, and environment entries, of one process

_SPAWN = struct.Struct("=IIIIIIQ")  # type, id, argc, envc, flags, zero, cpu seconds
LAST = 1  # SPAWN flag: the sandbox ends with this process
_SIGNAL = struct.Struct("=IIII")  # type, id, signal, whole group
_LISTEN = struct.Struct("=IIII")  # type, port, zero, zero
_EVENT = struct.Struct("=IIiI")  # type, id, value, zero


class Request(IntEnum):
    SPAWN = 1
    SIGNAL = 2
    LISTEN = 3


class Kind(IntEnum):
    READY = 1
    STARTED = 2  # value: the pid inside the sandbox
    FAILED = 3  # value: errno of fork, chdir or exec
    EXITED = 4  # value: the wait status


class AgentError(Exception):
    """The agent said something it never says: the sandbox can no longer be trusted."""


@dataclass(frozen=True)
class Event:
    kind: Kind
    id: int
    value: int


def spawn(
    id: int,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    cpu_seconds: int | None,
    last: bool = False,
) -> bytes:
    """The SPAWN request for one process; raises ValueError for what cannot be sent."""
    strings = [cwd, *argv, *(f"{name}={value}" for name, value in env.items())]
    if not argv or len(argv) > MAX_STRINGS or len(env) > MAX_STRINGS:
        raise ValueError("a process needs 1 to 8192 arguments and at most 8192 variables")
    if any("\0" in s for s in strings) or any("=" in name or not name for name in env):
        raise ValueError("arguments and variables cannot hold NUL bytes or '=' in names")
    payload = b"".join(s.encode("utf-8", "surrogateescape") + b"\0" for s in strings)
    flags = LAST if last else 0
    head = _SPAWN.pack(Request.SPAWN, id, len(argv), len(env), flags, 0, cpu_seconds or 0)
    if len(head) + len(payload) > MAX_MESSAGE:
        raise ValueError(f"arguments and environment exceed {MAX_MESSAGE} bytes")
    return head + payload


def signal(id: int, signo: int, group: bool) -> bytes:
    return _SIGNAL.pack(Request.SIGNAL, id, signo, int(group))


def listen(port: int) -> bytes:
    """The LISTEN request: accept and close connections on 127.0.0.1:``port``."""
    if not 1 <= port <= 65535:
        raise ValueError(f"not a port: {port}")
    return _LISTEN.pack(Request.LISTEN, port, 0, 0)


def parse(data: bytes) -> Event:
    """One report of the agent; anything but a well-formed report raises AgentError."""
    if len(data) != _EVENT.size:
        raise AgentError(f"a report of {len(data)} bytes")
    kind, id, value, zero = _EVENT.unpack(data)
    if kind not in Kind._value2member_map_ or zero != 0:
        raise AgentError(f"an unknown report {kind}")
    return Event(Kind(kind), id, value)


def binary(where: Path | None = None) -> Path:
    """The agent built from this source, compiled on first use."""
    return compiled.program("init", SOURCE.name, where)
