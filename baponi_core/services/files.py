"""The Files API: list, signed upload and download URLs, delete, for threads and volumes.

This service decides *which* root a request names and whether the caller may write there;
the backend (:mod:`baponi_core.storage`) does the rest, safely, wherever the bytes live.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from baponi_core import limits
from baponi_core.errors import Forbidden, NotFound, RateLimited, ValidationError
from baponi_core.models import FileEntry, FileRequest, SignedUrl, iso
from baponi_core.records import Principal
from baponi_core.storage.disk import DiskBackend
from baponi_core.storage.paths import parts
from baponi_core.storage.places import Place, Storage
from baponi_core.storage.signing import Grant, Method, UrlSigner
from baponi_core.storage.space import Space, refused_when_full
from baponi_core.store import Store

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
        return [
            FileEntry(
                name=e.name,
                path=e.path,
                size=e.size,
                modified=iso(e.modified),
                is_directory=e.is_directory,
            )
            for e in await place.backend.entries(place.key, prefix)
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
        if request.source == "thread":
            await self._check_quota(place, request.content_length)
        return await self._sign(place, names, "PUT", request, base_url)

    async def download_url(
        self, principal: Principal, request: FileRequest, base_url: str
    ) -> SignedUrl:
        place = await self._place(principal, request)
        return await self._sign(place, parts(request.path), "GET", request, base_url)

    async def read(
        self, principal: Principal, request: FileRequest, max_bytes: int
    ) -> bytes | None:
        """The whole file when it holds at most ``max_bytes``, else None."""
        names = parts(request.path)
        place = await self._place(principal, request)
        return await place.backend.read(place.key, names, max_bytes)

    async def delete(self, principal: Principal, request: FileRequest) -> None:
        names = parts(request.path)
        place = await self._place(principal, request, write=True)
        await place.backend.delete(place.key, names)

    async def _check_quota(self, place: Place, size: int) -> None:
        used = await place.backend.usage(place.key)
        if used + size > self.quota:
            raise RateLimited(
                f"thread disk quota exceeded ({used} of {self.quota} bytes used, "
                f"upload of {size} bytes)",
                retry_after=QUOTA_RETRY_S,
            )

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

    def verify(self, token: str, method: str) -> Grant:
        return self.signer.verify(token, method)

    async def download(self, grant: Grant) -> tuple[int, AsyncIterator[bytes]]:
        return await self._disk().download(grant)

    async def upload(self, grant: Grant, chunks: AsyncIterator[bytes]) -> None:
        """Local storage, and cloud stores whose own URLs cannot bind a size (Azure)."""
        self.space.check()
        if grant.root[0] == "threads":  # grants made before other uploads filled the thread
            assert grant.size is not None
            await self._check_quota(self.storage.thread(*grant.root[1:]), grant.size)
        with refused_when_full():  # filled meanwhile: nothing of it is left (disk.py)
            await self.storage.main.upload(grant, chunks)
