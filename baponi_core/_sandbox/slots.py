"""Slots: what the server shares with one sandbox, a directory of its own per sandbox.

::

    <slots>/.init               the agent, copied once per runtime
    <slots>/<id>/run/           /run/baponi, read-only: init (a hard link), the files
                                of the processes started (a script, say), and with
                                egress the proxy's socket (``egress``)
    <slots>/<id>/secrets/       /run/secrets, read-only: connector files, <connector>/<path>,
                                owned by the sandbox's uid, mode 0400
    <slots>/<id>/home/          /home/baponi: where the thread home or a tmpfs is mounted
    <slots>/<id>/data/          /data: where volumes are mounted, at <slug>[/<sub path>]

Only the server writes in a slot (the sandbox sees all of it read-only, but what is
mounted on ``home`` and under ``data``). A slot is removed entry by entry, each one the
server made, never by walking it: a mount still in place makes its directory stay
rather than its contents go. ``secrets/`` is the exception: nothing is ever mounted
there and only the server writes in it, so it is removed whole (a stale slot's too).
As root the slots are on a tmpfs of the server's own (:mod:`mountns`): connector
files never reach a disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path, PurePosixPath

from baponi_core._sandbox import egress
from baponi_core._sandbox.spec import DATA

log = logging.getLogger(__name__)

AGENT = ".init"
NAME_LIMIT = 255


class Slots:
    def __init__(self, base: Path) -> None:
        self.base = base
        self._agent = base / AGENT

    @classmethod
    def open(cls, base: Path, agent: Path) -> Slots:
        """Slots under ``base``, a directory private to this runtime: what a previous
        server left there is removed, and the agent copied in."""
        base.mkdir(mode=0o711, parents=True, exist_ok=True)
        base.chmod(0o711)
        for stale in base.iterdir():  # a previous server's, if it used a disk directory
            if stale.is_dir() and not stale.is_symlink():
                Slot(stale).remove()
        slots = cls(base)
        scratch = base / f"{AGENT}.new"
        shutil.copyfile(agent, scratch)
        scratch.chmod(0o755)
        scratch.replace(slots._agent)
        return slots

    def new(self, id: str) -> Slot:
        slot = Slot(self.base / id)
        slot.path.mkdir(mode=0o711)
        for part in (slot.run, slot.home, slot.data, slot.secrets):
            part.mkdir(mode=0o755)
        os.link(self._agent, slot.run / "init")
        return slot


class Slot:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.run, self.home, self.data = path / "run", path / "home", path / "data"
        self.secrets = path / "secrets"
        self._made: list[Path] = []  # directories made below data, in order

    def write(self, name: str, data: bytes) -> None:
        """A file the sandbox reads at /run/baponi/<name>; an existing one is refused."""
        if (
            name in ("", ".", "..", "init", egress.SOCKET)
            or "/" in name
            or "\0" in name
            or len(name) > NAME_LIMIT
        ):
            raise ValueError(f"{name!r} is not a file name a process can be given")
        fd = os.open(self.run / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
        with open(fd, "wb") as out:
            out.write(data)

    def write_secret(self, path: str, data: bytes, owner: int | None) -> None:
        """A file the sandbox reads at /run/secrets/<path>, readable by ``owner`` (the
        sandbox's host uid; None: ours) alone; its directories are made. An existing file
        is refused."""
        parts = PurePosixPath(path).parts
        if not parts or "/".join(parts) != path or any(p in (".", "..") for p in parts):
            raise ValueError(f"{path!r} is not a relative path a secret can be given")
        directory = self.secrets
        for name in parts[:-1]:
            directory = directory / name
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=0o755)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(directory / parts[-1], flags, 0o400)
        with open(fd, "wb") as out:
            if owner is not None:
                os.fchown(out.fileno(), owner, -1)
            out.write(data)

    def unlink(self, name: str) -> None:
        """Remove a file :meth:`write` made (gone already: nothing to do)."""
        if name in ("", ".", "..", "init") or "/" in name or "\0" in name:
            raise ValueError(f"{name!r} is not a file name a process can be given")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.run / name)

    def mount_point(self, target: str) -> Path:
        """The directory of ``data`` where a mount at ``target`` (/data/...) goes, made with
        its parents. Only the server writes here, and nothing is mounted yet below it."""
        parts = PurePosixPath(target).relative_to(DATA).parts
        path = self.data
        for name in parts:
            path = path / name
            if not path.exists():
                path.mkdir(mode=0o755)
                self._made.append(path)
        return path

    def remove(self) -> None:
        """Remove what the slot holds, once nothing is mounted in it any more."""
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.run):
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
        shutil.rmtree(self.secrets, ignore_errors=True)
        for path in [*reversed(self._made), self.run, self.home, self.data, self.path]:
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:  # still mounted: leave it rather than look inside
                log.warning("slot directory %s left in place: %s", path, exc.strerror)
