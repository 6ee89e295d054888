"""What a storage backend does for the services, whatever holds the bytes.

A *root* is one thread home or volume, named by a key such as ``("threads", org, thread)``.
Sandboxes always see a real directory, the root's *workspace*: on local disk it is the root
itself; with a cloud backend it is a local copy, brought in before an execution (``pull``)
and written back after it (``push``). Every method that touches a workspace treats what
sandboxed code made there as hostile (see :mod:`baponi_core._storage.local`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from baponi_core._errors import ValidationError
from baponi_core._storage.local import Entry
from baponi_core._storage.signing import Grant, Method, UrlSigner

Key = tuple[str, ...]
RESERVED = ".baponi-"  # names the server uses for its own objects; never listed or synced
SIGNED_PATH = "/v1/files/signed/"  # where this server answers the URLs it signs
OCTETS = "application/octet-stream"


@dataclass(frozen=True)
class Signed:
    """A URL granting one method on one file, and the headers the client must send."""

    url: str
    method: Method
    headers: list[dict[str, str]]
    expires: int


class Backend(Protocol):
    writes_back: bool  # whether push stores anything (a workspace that is not the root)

    def workspace(self, key: Key) -> Path:
        """The directory sandboxes bind for ``key``, made on first use."""
        ...

    def renewed(self, key: Key) -> None:
        """The workspace was made anew, empty: forget what was synced into the old one
        (so that the next pull brings everything in, and no push takes the emptiness for
        deletions)."""
        ...

    async def pull(self, key: Key) -> None:
        """Bring the workspace up to date with the stored root."""
        ...

    async def push(self, key: Key) -> None:
        """Store what changed in the workspace since the last pull or push."""
        ...

    async def exists(self, key: Key) -> bool: ...
    async def create(self, key: Key) -> None: ...
    async def entries(self, key: Key, prefix: tuple[str, ...]) -> list[Entry]: ...
    async def delete(self, key: Key, names: tuple[str, ...]) -> None: ...
    async def usage(self, key: Key) -> int:
        """Bytes the root takes."""
        ...

    async def read(self, key: Key, names: tuple[str, ...], max_bytes: int) -> bytes | None:
        """The whole file when it holds at most ``max_bytes``, else None."""
        ...

    async def sign(
        self,
        key: Key,
        names: tuple[str, ...],
        method: Method,
        size: int | None,
        content_type: str | None,
        expires: int,
        base_url: str,
    ) -> Signed:
        """A URL for one GET of an existing file, or one PUT of exactly ``size`` bytes."""
        ...

    async def upload(self, grant: Grant, chunks: AsyncIterator[bytes]) -> None:
        """Store exactly the granted size from ``chunks``, for a PUT URL this server
        signed; anything else leaves no trace."""
        ...

    async def children(self, key: Key) -> list[str]:
        """The names of the roots directly below ``key`` (e.g. the volume ids of an org)."""
        ...

    async def destroy(self, key: Key) -> None:
        """Remove a root, its stored files and any local copy; gone already is fine."""
        ...


def served(
    signer: UrlSigner,
    grant: Grant,
    content_type: str | None,
    base_url: str,
) -> Signed:
    """A URL that this server answers (``SIGNED_PATH``), carrying ``grant``."""
    headers = (
        [] if grant.method == "GET" else [{"name": "Content-Type", "value": content_type or OCTETS}]
    )
    url = base_url.rstrip("/") + SIGNED_PATH + signer.sign(grant)
    return Signed(url, grant.method, headers, grant.expires)


async def sized(chunks: AsyncIterator[bytes], size: int) -> AsyncGenerator[bytes]:
    """``chunks``, refused as soon as they exceed ``size`` bytes or if they end short."""
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > size:
            raise ValidationError(f"upload exceeds the signed size of {size} bytes")
        yield chunk
    if received != size:
        raise ValidationError(f"upload ended after {received} of {size} bytes")


def make_workspace(base: Path, key: Key, owner: int | None) -> Path:
    return ensure_workspace(base, key, owner)[0]


def ensure_workspace(base: Path, key: Key, owner: int | None) -> tuple[Path, bool]:
    """``base/key…`` and whether it was just made: parents traversable but not listable by
    the sandbox uid; the root itself private to it. Key parts are validated names, never
    request paths."""
    path = base
    for name in key[:-1]:
        path = path / name
        _mkdir(path, 0o711)
    path = path / key[-1]
    made = _mkdir(path, 0o700)
    if made and owner is not None:
        os.chown(path, owner, owner, follow_symlinks=False)
    return path, made


def _mkdir(path: Path, mode: int) -> bool:
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        return False
    path.chmod(mode)  # explicit: mkdir's mode is filtered by the umask
    return True
