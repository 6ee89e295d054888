"""What execd says about a file (its ``FileInfo``), read inside the sandbox by ``find
-printf`` and parsed strictly: whatever that process prints is the sandbox's to forge, so
a record that is not exactly the expected fields is refused, never guessed at."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel

from baponi_core._sandboxes.errors import RuntimeFailure

# One record per file: type, size, modified, born, changed, owner, group, mode, path; each
# field ends in a NUL (the only byte no path holds). find names an owner without a name
# by its number, as FileInfo wants.
FORMAT = r"%y\0%s\0%T@\0%B@\0%C@\0%u\0%g\0%m\0%p\0"
FIELDS = 9
NAME = re.compile(rb"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}\$?")
SECONDS = re.compile(rb"-?[0-9]{1,12}(\.[0-9]{1,10})?")
OCTAL = re.compile(rb"[0-7]{1,4}")
SIZE = re.compile(rb"[0-9]{1,20}")


class FileType(StrEnum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    OTHER = "other"


TYPES = {b"f": FileType.FILE, b"d": FileType.DIRECTORY, b"l": FileType.SYMLINK}


class FileInfo(BaseModel):
    """The SDK's ``FileInfo``: ``mode`` is the permission's octal digits read as a decimal
    number (``0o755`` is ``755``), times are RFC 3339 in UTC."""

    path: str
    type: FileType
    size: int
    modified_at: datetime
    created_at: datetime
    owner: str
    group: str
    mode: int


def parse(output: bytes) -> list[FileInfo]:
    """The records of ``find -printf FORMAT``."""
    fields = output.split(b"\0")
    if fields.pop() != b"" or len(fields) % FIELDS:
        raise _unreadable()
    return [_record(fields[i : i + FIELDS]) for i in range(0, len(fields), FIELDS)]


def _record(fields: list[bytes]) -> FileInfo:
    kind, size, modified, born, changed, owner, group, mode, path = fields
    if not (SIZE.fullmatch(size) and OCTAL.fullmatch(mode) and path):
        raise _unreadable()
    # Birth times are not kept by every filesystem: then the last change stands in.
    created = born if SECONDS.fullmatch(born) and born.strip(b"0.") else changed
    return FileInfo(
        path=path.decode(errors="replace"),
        type=TYPES.get(kind, FileType.OTHER),
        size=int(size),
        modified_at=_time(modified),
        created_at=_time(created),
        owner=_name(owner),
        group=_name(group),
        mode=int(mode),
    )


def _time(seconds: bytes) -> datetime:
    if not SECONDS.fullmatch(seconds):
        raise _unreadable()
    return datetime.fromtimestamp(float(seconds), UTC)


def _name(name: bytes) -> str:
    if not NAME.fullmatch(name):  # a name of the sandbox's /etc/passwd, or a number
        raise _unreadable()
    return name.decode()


def _unreadable() -> RuntimeFailure:
    return RuntimeFailure("the sandbox's file listing could not be read")
