"""The embedded backend: roots are directories on local disk, bound into sandboxes as they are.

Signed URLs are HMAC tokens (:mod:`signing`) that the HTTP adapter serves by calling
:meth:`DiskBackend.download` and :meth:`DiskBackend.upload`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import anyio

from baponi_core._errors import NotFound
from baponi_core._storage.backend import Key, Signed, make_workspace, served, sized
from baponi_core._storage.local import Entry, LocalTree, Upload
from baponi_core._storage.signing import Grant, Method, UrlSigner

CHUNK = 1 << 20


class DiskBackend:
    writes_back = False  # a root's workspace is the root itself

    def __init__(self, base: Path, owner: int | None, signer: UrlSigner) -> None:
        self.base = base
        self.owner = owner
        self.signer = signer
        self.tree = LocalTree(base, owner=owner)

    def workspace(self, key: Key) -> Path:
        return make_workspace(self.base, key, self.owner)

    def renewed(self, key: Key) -> None:
        """Nothing to forget: the workspace is the root."""

    async def pull(self, key: Key) -> None:
        await anyio.to_thread.run_sync(self.workspace, key)

    async def push(self, key: Key) -> None:
        """Nothing to do: sandboxes wrote to the root itself."""

    async def exists(self, key: Key) -> bool:
        return await anyio.to_thread.run_sync(self.tree.exists, key)

    async def create(self, key: Key) -> None:
        await anyio.to_thread.run_sync(self.workspace, key)

    async def entries(self, key: Key, prefix: tuple[str, ...]) -> list[Entry]:
        return await anyio.to_thread.run_sync(self.tree.entries, key, prefix)

    async def delete(self, key: Key, names: tuple[str, ...]) -> None:
        await anyio.to_thread.run_sync(self.tree.delete, key + names)

    async def usage(self, key: Key) -> int:
        return await anyio.to_thread.run_sync(self.tree.usage, key)

    async def children(self, key: Key) -> list[str]:
        return await anyio.to_thread.run_sync(self.tree.children, key)

    async def destroy(self, key: Key) -> None:
        with contextlib.suppress(NotFound):
            await anyio.to_thread.run_sync(self.tree.delete, key)

    async def read(self, key: Key, names: tuple[str, ...], max_bytes: int) -> bytes | None:
        fd, size = await anyio.to_thread.run_sync(self.tree.open_read, key + names)
        try:
            if size > max_bytes:
                return None
            return await anyio.to_thread.run_sync(os.read, fd, max_bytes + 1)
        finally:
            os.close(fd)

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
        if method == "GET":
            fd, _ = await anyio.to_thread.run_sync(self.tree.open_read, key + names)
            os.close(fd)
        grant = Grant(method, key, "/".join(names), size, expires)
        return served(self.signer, grant, content_type, base_url)

    # serving signed URLs

    async def download(self, grant: Grant) -> tuple[int, AsyncIterator[bytes]]:
        """The size of the granted file and its bytes, read as they are sent."""
        names = grant.root + tuple(grant.path.split("/"))
        fd, size = await anyio.to_thread.run_sync(self.tree.open_read, names)
        return size, _read(fd)

    async def upload(self, grant: Grant, chunks: AsyncIterator[bytes]) -> None:
        """Write exactly the granted size from ``chunks``; anything else leaves no trace."""
        assert grant.size is not None
        names = tuple(grant.path.split("/"))
        upload = await anyio.to_thread.run_sync(self.tree.begin_upload, grant.root, names)
        try:
            async with aclosing(sized(chunks, grant.size)) as body:
                async for chunk in body:
                    await anyio.to_thread.run_sync(write, upload, chunk)
            # On disk before it has a name: an answered upload is never lost, and one that
            # cannot be written (a full disk under a home's image) is refused, not half-kept.
            await anyio.to_thread.run_sync(os.fsync, upload.fd)
            await anyio.to_thread.run_sync(self.tree.commit, upload)
        finally:
            upload.close()  # an unlinked O_TMPFILE: what was not committed disappears


async def _read(fd: int) -> AsyncIterator[bytes]:
    try:
        while chunk := await anyio.to_thread.run_sync(os.read, fd, CHUNK):
            yield chunk
    finally:
        os.close(fd)


def write(upload: Upload, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(upload.fd, view) :]
    upload.written += len(chunk)
