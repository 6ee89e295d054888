"""Thread homes: one persistent directory per (organisation, thread), used by one run at a time."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from baponi_core.errors import Conflict


class ThreadHomes:
    def __init__(self, root: Path, owner: int | None) -> None:
        self.root = root
        self.owner = owner  # host uid of sandboxed code, which must own its home
        self._busy: set[tuple[str, str]] = set()

    @contextlib.contextmanager
    def claim(self, org_id: str, thread_id: str) -> Iterator[tuple[str, str]]:
        """Hold the thread for one execution; a second claim at once is a 409."""
        slot = (org_id, thread_id)
        if slot in self._busy:
            raise Conflict(f"thread {thread_id} is busy: another execution is using it")
        self._busy.add(slot)
        try:
            yield slot
        finally:
            self._busy.discard(slot)

    def path(self, org_id: str, thread_id: str) -> Path:
        """The thread's home, created on first use. Ids are validated names, never paths."""
        org_dir = self.root / org_id
        home = org_dir / thread_id
        _mkdir(org_dir, 0o711)  # traversable by the sandbox uid, not listable
        if _mkdir(home, 0o700) and self.owner is not None:
            os.chown(home, self.owner, self.owner, follow_symlinks=False)
        return home


def _mkdir(path: Path, mode: int) -> bool:
    try:
        path.mkdir()
    except FileExistsError:
        return False
    path.chmod(mode)  # explicit: mkdir's mode is filtered by the umask
    return True
