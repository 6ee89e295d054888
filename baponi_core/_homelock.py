"""One server per home: the SQLite database, thread claims and live journals assume it.

A second process on the same home would settle the first one's running executions as
stopped and deliver its webhooks twice, so it is refused at start instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from baponi_core._errors import CannotStart


class HomeInUse(CannotStart):
    pass


def lock_home(home: Path) -> int:
    """An fd holding the home's lock until it is closed (or the process ends)."""
    fd = os.open(home / "baponi.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
        os.close(fd)
        if holder == str(os.getpid()):
            raise HomeInUse(
                f"{home} is already open in this process: one core per home (close the "
                "other one first, or give this one a home of its own)"
            ) from None
        raise HomeInUse(
            f"{home} is in use by a running Baponi server (pid {holder}): stop it or use "
            "another --home. MCP clients can connect to its /mcp endpoint instead."
        ) from None
    except BaseException:
        os.close(fd)
        raise
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
