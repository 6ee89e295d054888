"""The gate (``gate.c``): bwrap is started held at it, moved into the sandbox's cgroups,
then let through, so that the cgroup namespace bwrap makes is rooted at the sandbox's own
cgroups. Its processes then see "/" in /proc/self/cgroup, not the server's cgroup path
and pid; and bwrap, as the sandbox's first process, counts against its limits too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from baponi_core._sandbox import compiled

SOURCE = "gate.c"
OPEN = b"\x01"


def binary() -> Path:
    """The gate built from its source, compiled on first use."""
    return compiled.program("gate", SOURCE)


def install(base: Path) -> Path:
    """The gate, copied into ``base`` (where the unprivileged spawner can execute it)."""
    target, scratch = base / "gate", base / "gate.new"
    shutil.copyfile(binary(), scratch)
    scratch.chmod(0o755)
    scratch.replace(target)
    return target


class Gate:
    """A pipe: the gate holds its read end, the server its write end."""

    def __init__(self) -> None:
        self.held, self._opener = os.pipe2(os.O_CLOEXEC)

    def wrap(self, gate: Path, argv: list[str]) -> list[str]:
        """``argv`` started through ``gate``, which waits on this pipe first."""
        return [str(gate), str(self.held), *argv]

    def open(self) -> None:
        """Let bwrap start."""
        os.write(self._opener, OPEN)

    def close(self) -> None:
        """Close both ends: a gate not opened by then exits without starting bwrap."""
        for fd in (self.held, self._opener):
            if fd >= 0:
                os.close(fd)
        self.held = self._opener = -1
