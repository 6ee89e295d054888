"""The Files API: list, signed upload and download URLs, delete, for threads and volumes.

This service decides *which* root a request names and whether the caller may write there;
the backend (:mod:`baponi_core._storage`) does the rest, safely, wherever the bytes live.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from baponi_core import _limits as limits
from baponi_core._errors import Forbidden, NotFound, RateLimited, Unavailable, ValidationError
from baponi_core._models import FileEntry, FileRequest, SignedUrl, iso
from baponi_core._records import Principal
from baponi_core._storage.disk import DiskBackend
from baponi_core._storage.disks import DiskError
from baponi_core._storage.paths import parts
from baponi_core._storage.places import Place, Storage
from baponi_core._storage.signing import Grant, Method, UrlSigner
from baponi_core._storage.space import FULL, Space, refused_when_full
from baponi_core._store import Store

QUOTA_RETRY_S = 60


class Files:
    def __init__(
        self, store: Store, storage: Storage, signer: UrlSigner, quota: int, space: Space
    ) -> None:
        self.store = store
        self.storage = storage
        self.signer = signer
        self.quota = quota  # bytes a thread may hold
        self.space = space  # the server's disks: a full one refuses uploads it would take

    @property
    def serves_urls(self) -> bool:
        """Whether the signed URLs handed out are this server's own (local storage), to be
        answered by :meth:`download` and :meth:`upload`, rather than a cloud provider's."""
        return self.storage.disk is not None

    async def _place(
        self, principal: Principal, request: FileRequest, write: bool = False, create: bool = False
    ) -> Place:
        """The root ``request`` names in the caller's organisation; a thread is made by an
        upload (``create``), never by a read."""
        if request.source == "volume":
            volume = await self.store.get_volume(principal.org.id, request.id)
            if volume is None or volume.url is not None:  # connections live in users' buckets
                raise NotFound(f"volume {request.id} not found")
            place = self.storage.volume(volume)
            if write and place.read_only:
                raise Forbidden(f"volume {request.id} is read-only")
            if write:  # reads of a volume nothing has written to yet find it empty
                await place.backend.create(place.key)
            return place
        place = self.storage.thread(principal.org.id, request.id)
        if create:
            await place.backend.create(place.key)
        elif not await place.backend.exists(place.key):
            raise NotFound(f"thread {request.id} not found")
        return place

    async def list_files(self, principal: Principal, request: FileRequest) -> list[FileEntry]:
        prefix = parts(request.path, allow_root=True)
        place = await self._place(principal, request)
        async with self._reached(place):
            found = await place.backend.entries(place.key, prefix)
        return [
            FileEntry(
                name=e.name,
                path=e.path,
                size=e.size,
                modified=iso(e.modified),
                is_directory=e.is_directory,
            )
            for e in found
        ]

    async def upload_url(
        self, principal: Principal, request: FileRequest, base_url: str
    ) -> SignedUrl:
        names = parts(request.path)
        if request.content_length is None:
            raise ValidationError("content_length is required")
        if self.serves_urls:  # the bytes would come to this server's disk
            self.space.check()
        place = await self._place(principal, request, write=True, create=True)
        async with self._reached(place):
            await self._check_quota(place, request.content_length)
            return await self._sign(place, names, "PUT", request, base_url)

    async def download_url(
        self, principal: Principal, request: FileRequest, base_url: str
    ) -> SignedUrl:
        names = parts(request.path)  # the request is checked before anything is looked up
        place = await self._place(principal, request)
        async with self._reached(place):
            return await self._sign(place, names, "GET", request, base_url)

    async def read(
        self, principal: Principal, request: FileRequest, max_bytes: int
    ) -> bytes | None:
        """The whole file when it holds at most ``max_bytes``, else None."""
        names = parts(request.path)
        place = await self._place(principal, request)
        async with self._reached(place):
            return await place.backend.read(place.key, names, max_bytes)

    async def delete(self, principal: Principal, request: FileRequest) -> None:
        names = parts(request.path)
        place = await self._place(principal, request, write=True)
        async with self._reached(place):
            await place.backend.delete(place.key, names)

    @contextlib.asynccontextmanager
    async def _reached(self, place: Place) -> AsyncIterator[None]:
        """The block runs with ``place``'s files within reach (its filesystem mounted)."""
        try:
            async with self.storage.held(place):
                yield
        except DiskError as exc:
            raise Unavailable("the thread's files cannot be reached now; try again") from exc

    async def _check_quota(self, place: Place, size: int) -> None:
        """Refuse an upload that cannot fit. Only a guess with a filesystem of its own
        (a thread home, a volume with a quota), which then refuses the write itself:
        concurrent uploads cannot add up. Without one a thread home is measured."""
        if self.storage.disks is not None and place.size is not None:
            quota = place.size
            room = min(self.storage.disks.free(place.workspace), quota)
            used = quota - room
        elif place.key[0] == "threads":
            quota, used = self.quota, await place.backend.usage(place.key)
            room = quota - used
        else:  # a volume without a quota
            return
        if size > room:
            raise _quota_exceeded(f"{used} of {quota} bytes used, upload of {size} bytes", place)

    async def _sign(
        self,
        place: Place,
        names: tuple[str, ...],
        method: Method,
        request: FileRequest,
        base_url: str,
    ) -> SignedUrl:
        expires = int(time.time()) + limits.SIGNED_URL_TTL_S
        signed = await place.backend.sign(
            place.key,
            names,
            method,
            request.content_length if method == "PUT" else None,
            request.content_type,
            expires,
            base_url,
        )
        return SignedUrl(
            url=signed.url,
            method=signed.method,
            headers=signed.headers,
            expires_at=iso(signed.expires),
        )

    # serving the URLs this server signs

    def _disk(self) -> DiskBackend:
        if self.storage.disk is None:  # cloud backends hand out the provider's URLs
            raise NotFound("not found")
        return self.storage.disk

    async def verify(self, token: str, method: str) -> Grant:
        """The grant of ``token``, while what it names still exists: a URL of a volume
        stops working when the volume is deleted, not when it expires."""
        grant = self.signer.verify(token, method)
        await self._granted(grant)
        return grant

    async def download(self, grant: Grant) -> tuple[int, AsyncIterator[bytes]]:
        """The file's size and its bytes; its filesystem stays mounted while they are read."""
        place = await self._granted(grant)
        reached = contextlib.AsyncExitStack()
        await reached.enter_async_context(self._reached(place))
        try:
            size, chunks = await self._disk().download(grant)
        except BaseException:
            await reached.aclose()
            raise
        return size, _while(chunks, reached)

    async def upload(self, grant: Grant, chunks: AsyncIterator[bytes]) -> None:
        """Local storage, and cloud stores whose own URLs cannot bind a size (Azure)."""
        self.space.check()
        await self._store(await self._granted(grant), grant, chunks)

    async def write(
        self, principal: Principal, request: FileRequest, chunks: AsyncIterator[bytes]
    ) -> None:
        """What an upload through a signed URL does, for an in-process caller who needs no
        URL: ``content_length`` bytes from ``chunks`` at the request's path."""
        names = parts(request.path)
        if request.content_length is None:
            raise ValidationError("content_length is required")
        self.space.check()
        place = await self._place(principal, request, write=True, create=True)
        expires = int(time.time()) + limits.SIGNED_URL_TTL_S
        grant = Grant("PUT", place.key, "/".join(names), request.content_length, expires)
        await self._store(place, grant, chunks)

    async def _store(self, place: Place, grant: Grant, chunks: AsyncIterator[bytes]) -> None:
        async with self._reached(place):
            assert grant.size is not None  # grants made before other uploads filled it
            await self._check_quota(place, grant.size)
            with refused_when_full():  # the disk filled meanwhile: nothing of it is left
                try:
                    await self.storage.main.upload(grant, chunks)
                except OSError as exc:
                    if exc.errno not in FULL or place.size is None or self.space.full:
                        raise
                    # Its own filesystem full, not the disk: the quota.
                    raise _quota_exceeded(f"upload of {grant.size} bytes", place) from exc

    async def _granted(self, grant: Grant) -> Place:
        """The place a grant names; a volume deleted since is not found."""
        kind, org_id, name = grant.root
        if kind == "threads":
            return self.storage.thread(org_id, name)
        for volume in await self.store.list_volumes(org_id):
            if volume.id == name and volume.url is None:
                return self.storage.volume(volume)
        raise NotFound("the volume of this signed URL no longer exists")


def _quota_exceeded(detail: str, place: Place) -> RateLimited:
    kind = "thread" if place.key[0] == "threads" else "volume"
    return RateLimited(f"{kind} disk quota exceeded ({detail})", retry_after=QUOTA_RETRY_S)


async def _while(
    chunks: AsyncIterator[bytes], reached: contextlib.AsyncExitStack
) -> AsyncIterator[bytes]:
    """``chunks``, with what ``reached`` holds let go once they are read."""
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        await reached.aclose()
