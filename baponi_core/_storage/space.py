"""Free space where the server writes: refuse new work on a full disk with one clear 503
(:class:`NoSpace`) rather than fail half-way, and say a write that found it full the same."""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

from baponi_core._errors import NoSpace

FULL = {errno.ENOSPC, errno.EDQUOT}


class Space:
    """The filesystems of the server's home (the database, caches) and of its local
    storage directory."""

    def __init__(self, *paths: Path) -> None:
        self.paths = tuple(dict.fromkeys(paths))

    @property
    def full(self) -> bool:
        return any(shutil.disk_usage(path).free == 0 for path in self.paths if path.exists())

    def check(self) -> None:
        """Refuse what would write, while any of them is full."""
        if self.full:
            raise NoSpace()


@contextlib.contextmanager
def refused_when_full() -> Iterator[None]:
    """A write that ran out of space, as NoSpace; other errors pass."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL:
            raise NoSpace() from exc
        raise
