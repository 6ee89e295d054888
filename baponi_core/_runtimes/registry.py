"""The runtimes directory: which runtimes there are, the current generation of each, and
the moves that change them (install, replace, delete), each one atomic rename.

::

    <dir>/<name>/<generation>/        one import; the newest generation is current
    <dir>/.tmp-<random>/              an import under way (locked by the importer)
    <dir>/.deleted-<random>/<gen>/    a deleted runtime's generations still in use
    <dir>/.trash-<random>/            being removed

A server reads it, never changes it but to remove what it alone still held
(:class:`baponi_core._sandbox.image.Hold`); ``baponi runtimes`` changes it, beside
running servers.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError as Malformed

from baponi_core._errors import Conflict, NotFound, RuntimeMissing
from baponi_core._runtimes.description import Description
from baponi_core._sandbox.image import HIDDEN, Runtime, generations, retire

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """A runtime as ``baponi runtimes list`` shows it."""

    name: str
    generation: str
    description: Description


class Runtimes:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._known: dict[Path, Runtime] = {}  # read descriptions, by generation

    def find(self, name: str) -> Runtime | None:
        """The current generation of ``name``; None if there is none (or it is damaged,
        which is logged)."""
        generation = self._current(name)
        if generation is None:
            return None
        known = self._known.get(generation)
        if known is None:
            try:
                known = Description.read(generation).runtime(name, generation)
            except (OSError, Malformed) as exc:
                log.error("runtime %s: %s cannot be read: %s", name, generation, exc)
                return None
            self._known[generation] = known
        return known

    def get(self, name: str) -> Runtime:
        runtime = self.find(name)
        if runtime is None:
            raise RuntimeMissing(name)
        return runtime

    def entries(self) -> list[Entry]:
        """Every runtime, by name, with its current generation's description."""
        found = []
        for name in self._names():
            generation = self._current(name)
            if generation is None:
                continue
            try:
                found.append(Entry(name, generation.name, Description.read(generation)))
            except (OSError, Malformed) as exc:
                log.error("runtime %s cannot be read: %s", name, exc)
        return found

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A directory inside the runtimes directory (so that what is made in it can be
        renamed into place), locked while the import lives and removed after."""
        self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        path = self.directory / f"{HIDDEN}tmp-{secrets.token_hex(8)}"
        path.mkdir(mode=0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a sweep beside us leaves it alone
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            os.close(fd)

    def install(self, name: str, generation: Path, replace: bool) -> str:
        """Move the staged ``generation`` into place as the current one of ``name``; older
        generations go once no sandbox holds them. Its generation name."""
        place = self.directory / name
        if not replace:
            self.check_free(name)
        place.mkdir(mode=0o755, exist_ok=True)
        chosen = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
        generation.chmod(0o755)
        os.rename(generation, place / chosen)
        self.sweep()
        return chosen

    def check_free(self, name: str) -> None:
        if self._current(name) is not None:
            raise Conflict(f"runtime {name} exists; import with --replace to replace it")

    def delete(self, name: str) -> None:
        """Remove ``name`` at once for new sandboxes (one rename); its files go once no
        sandbox holds them."""
        if self._current(name) is None:
            raise NotFound(f"runtime {name} not found")
        gone = self.directory / f"{HIDDEN}deleted-{secrets.token_hex(8)}"
        os.rename(self.directory / name, gone)
        self.sweep()

    def sweep(self) -> None:
        """Remove every generation no sandbox can still get, unless one holds it, and
        what died imports left."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            path = self.directory / name
            if name.startswith(f"{HIDDEN}deleted-"):
                for left in generations(path):
                    retire(path / left, self.directory)
                with contextlib.suppress(OSError):
                    path.rmdir()
            elif name.startswith(HIDDEN):
                retire(path, self.directory)
            else:
                for old in generations(path)[:-1]:
                    retire(path / old, self.directory)

    def _names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.directory) if not n.startswith(HIDDEN))
        except FileNotFoundError:
            return []

    def _current(self, name: str) -> Path | None:
        if not name or name.startswith(HIDDEN) or "/" in name or "\0" in name:
            return None
        names = generations(self.directory / name)
        return self.directory / name / names[-1] if names else None
