"""Image roots where bwrap can reach them, on a root server.

bwrap, running as the sandbox's uid, resolves what it binds by path, with that uid's
permissions: a runtime's root below the server's private home (``0700``) is out of its
reach, even given as a descriptor (bwrap turns one back into its path). So each image
generation in use is bind-mounted, read-only, ``nosuid`` and ``nodev``, once, below the
private ``/run/baponi`` (traversable, not listable), and kept there while it is current:
once a replace or a delete has made it stale, it is unmounted with its last sandbox. A
server that is not root runs its sandboxes as itself: they reach the runtimes directory
by its own path.
"""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

from baponi_core._sandbox import attach
from baponi_core._sandbox.image import Hold, stale


class Roots:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.base.mkdir(mode=0o711, exist_ok=True)
        self._lock = threading.Lock()  # taken on the event loop, given on the janitor
        self._mounted: dict[Path, tuple[Path, int]] = {}  # generation -> (mount point, users)

    def take(self, hold: Hold) -> Path:
        """Where the held generation's root is mounted, for one more sandbox."""
        generation = hold.runtime.directory
        assert generation is not None
        with self._lock:
            self._forget_stale()
            point, users = self._mounted.get(generation, (None, 0))
            if point is None:
                point = self.base / secrets.token_hex(8)
                point.mkdir(mode=0o755)
                fd = hold.root()
                assert fd is not None
                try:
                    attach.bind(fd, point, read_only=True)
                except BaseException:
                    point.rmdir()
                    raise
                finally:
                    os.close(fd)
            self._mounted[generation] = (point, users + 1)
            return point

    def give(self, hold: Hold) -> None:
        """One sandbox fewer on the generation: unmounted after its last if it is stale."""
        generation = hold.runtime.directory
        assert generation is not None
        with self._lock:
            point, users = self._mounted[generation]
            self._mounted[generation] = (point, users - 1)
            self._forget_stale()

    def mounted(self) -> list[Path]:
        """Where roots are mounted, for the runtime to unmount as it closes."""
        with self._lock:
            return [point for point, _ in self._mounted.values()]

    def _forget_stale(self) -> None:
        for generation, (point, users) in list(self._mounted.items()):
            if users == 0 and stale(generation):
                del self._mounted[generation]
                attach.detach(point)
                point.rmdir()
