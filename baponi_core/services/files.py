"""The Files API: list, signed upload and download URLs, delete; and serving those URLs.

Only thread homes on local disk exist so far; volumes answer 404 until they are built.
Every file operation runs in a worker thread through :class:`LocalTree`, which never
follows a link made by sandboxed code.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import anyio

from baponi_core import limits
from baponi_core.errors import NotFound, ValidationError
from baponi_core.models import FileEntry, FileRequest, SignedUrl, iso
from baponi_core.services.threads import ThreadHomes
from baponi_core.storage.local import LocalTree, Upload
from baponi_core.storage.paths import parts
from baponi_core.storage.signing import Grant, UrlSigner
from baponi_core.store import Principal

CHUNK = 1 << 20
SIGNED_PATH = "/v1/files/signed/"


class Files:
    def __init__(self, threads: ThreadHomes, signer: UrlSigner) -> None:
        self.threads = threads
        self.signer = signer
        self.tree = LocalTree(threads.root, owner=threads.owner)

    async def _root(
        self, principal: Principal, request: FileRequest, create: bool = False
    ) -> tuple[str, ...]:
        if request.source == "volume":
            raise NotFound(f"volume {request.id} not found")
        base = (principal.org.id, request.id)
        if create:
            await anyio.to_thread.run_sync(self.threads.path, *base)
        elif not await anyio.to_thread.run_sync(self.tree.exists, base):
            raise NotFound(f"thread {request.id} not found")
        return base

    async def list_files(self, principal: Principal, request: FileRequest) -> list[FileEntry]:
        prefix = parts(request.path, allow_root=True)
        base = await self._root(principal, request)
        entries = await anyio.to_thread.run_sync(self.tree.entries, base, prefix)
        return [
            FileEntry(
                name=e.name,
                path=e.path,
                size=e.size,
                modified=iso(e.modified),
                is_directory=e.is_directory,
            )
            for e in entries
        ]

    async def upload_url(
        self, principal: Principal, request: FileRequest, base_url: str
    ) -> SignedUrl:
        names = parts(request.path)
        if request.content_length is None:
            raise ValidationError("content_length is required")
        base = await self._root(principal, request, create=True)
        grant = self._grant("PUT", base, names, request.content_length)
        headers = [{"name": "Content-Type", "value": request.content_type or _OCTETS}]
        return self._url(grant, base_url, headers)

    async def download_url(
        self, principal: Principal, request: FileRequest, base_url: str
    ) -> SignedUrl:
        names = parts(request.path)
        base = await self._root(principal, request)
        fd, _ = await anyio.to_thread.run_sync(self.tree.open_read, base + names)
        os.close(fd)
        return self._url(self._grant("GET", base, names, None), base_url, [])

    async def read(
        self, principal: Principal, request: FileRequest, max_bytes: int
    ) -> bytes | None:
        """The whole file when it holds at most ``max_bytes``, else None."""
        names = parts(request.path)
        base = await self._root(principal, request)
        fd, size = await anyio.to_thread.run_sync(self.tree.open_read, base + names)
        try:
            if size > max_bytes:
                return None
            return await anyio.to_thread.run_sync(os.read, fd, max_bytes + 1)
        finally:
            os.close(fd)

    async def delete(self, principal: Principal, request: FileRequest) -> None:
        names = parts(request.path)
        base = await self._root(principal, request)
        await anyio.to_thread.run_sync(self.tree.delete, base + names)

    def _grant(
        self, method: str, base: tuple[str, ...], names: tuple[str, ...], size: int | None
    ) -> Grant:
        expires = int(time.time()) + limits.SIGNED_URL_TTL_S
        return Grant(method, ("thread", *base), "/".join(names), size, expires)

    def _url(self, grant: Grant, base_url: str, headers: list[dict[str, str]]) -> SignedUrl:
        return SignedUrl(
            url=base_url.rstrip("/") + SIGNED_PATH + self.signer.sign(grant),
            method=grant.method,  # type: ignore[arg-type]
            headers=headers,
            expires_at=iso(grant.expires),
        )

    # serving signed URLs

    def verify(self, token: str, method: str) -> Grant:
        return self.signer.verify(token, method)

    async def download(self, grant: Grant) -> tuple[int, AsyncIterator[bytes]]:
        """The size of the granted file and its bytes, read as they are sent."""
        names = _names(grant)
        fd, size = await anyio.to_thread.run_sync(self.tree.open_read, names)
        return size, _read(fd)

    async def upload(self, grant: Grant, chunks: AsyncIterator[bytes]) -> None:
        """Write exactly the granted size from ``chunks``; anything else leaves no trace."""
        assert grant.size is not None
        upload = await anyio.to_thread.run_sync(self.tree.begin_upload, _names(grant))
        try:
            async for chunk in chunks:
                if upload.written + len(chunk) > grant.size:
                    raise ValidationError(f"upload exceeds the signed size of {grant.size} bytes")
                await anyio.to_thread.run_sync(_write, upload, chunk)
            if upload.written != grant.size:
                raise ValidationError(f"upload ended after {upload.written} of {grant.size} bytes")
            await anyio.to_thread.run_sync(self.tree.commit, upload)
        finally:
            upload.close()  # an unlinked O_TMPFILE: what was not committed disappears


_OCTETS = "application/octet-stream"


def _names(grant: Grant) -> tuple[str, ...]:
    kind, *base = grant.root
    if kind != "thread":
        raise NotFound("storage not found")
    return (*base, *grant.path.split("/"))


async def _read(fd: int) -> AsyncIterator[bytes]:
    try:
        while chunk := await anyio.to_thread.run_sync(os.read, fd, CHUNK):
            yield chunk
    finally:
        os.close(fd)


def _write(upload: Upload, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(upload.fd, view) :]
    upload.written += len(chunk)
