"""What ``baponi serve`` needs before it serves, each refused with one line for the
operator (:class:`CannotStart`) rather than a traceback: a usable home, the listening
socket, and start-up errors of the core translated."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from baponi_core._errors import BaponiError, CannotStart
from baponi_core._homelock import lock_home


def claim_home(home: Path) -> None:
    """Make the home if missing and check, by taking its lock once, that it is ours."""
    if home.exists() and not home.is_dir():
        raise CannotStart(f"home {home} is not a directory")
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(lock_home(home))
    except OSError as exc:
        raise CannotStart(f"home {home}: {exc.strerror or exc}") from None


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound now, so that a port in use is said at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise CannotStart(f"cannot listen on {host}:{port}: {why}") from None


@contextlib.contextmanager
def known_failures(home: Path) -> Iterator[None]:
    """Start-up failures of the core (a file it cannot read, the database refusing) as
    CannotStart; anything else is a bug and keeps its traceback."""
    try:
        yield
    except CannotStart:
        raise
    except BaponiError as exc:
        raise CannotStart(f"{exc.message} (home {home})") from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise CannotStart(f"{exc.strerror or exc}{where}") from None
