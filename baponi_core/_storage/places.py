"""Which backend holds a thread home, a volume or a storage connection, and under what key.

The server's own storage (``--storage``: a directory, the default being the server home, or
an ``s3://``, ``gs://`` or ``az://`` URL) holds thread homes and managed volumes. A storage
connection is a volume whose bytes stay in the user's own bucket: it gets a backend of its
own, built from credentials that only the server ever sees.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import fsspec

from baponi_core._errors import ValidationError
from baponi_core._models import decimal
from baponi_core._records import Volume
from baponi_core._storage.backend import Backend, Key
from baponi_core._storage.cloud import CloudBackend, forget_copy
from baponi_core._storage.disk import DiskBackend
from baponi_core._storage.disks import Disks, image_of
from baponi_core._storage.local import LocalTree
from baponi_core._storage.signing import UrlSigner
from baponi_core._storage.urls import CLOUD_SCHEMES, is_directory_url


@dataclass(frozen=True)
class Place:
    """One root in its backend, and the execution error when it cannot be brought in."""

    backend: Backend
    key: Key
    mount_error: str
    read_only: bool = False
    size: int | None = None  # bytes its filesystem holds, when it has one (:mod:`disks`)

    @property
    def workspace(self) -> Path:
        return self.backend.workspace(self.key)


class Storage:
    def __init__(
        self,
        url: str | None,
        options: dict[str, Any],
        home: Path,
        owner: int | None,
        signer: UrlSigner,
        thread_quota: int,
        volume_size: int,
        disks: Disks | None = None,
    ) -> None:
        self.cache = home / "cache"
        self.owner = owner
        self.disk: DiskBackend | None = None
        self.main: Backend
        self.staging = home / "staging"  # files on their way to a bucket; the server's alone
        if url is None or is_directory_url(url):
            base = Path(url.removeprefix("file://")) if url else home
            self.disk = self.main = DiskBackend(base, owner, signer)
        else:
            self.main = cloud(url, options, self.cache / "server", owner, self.staging, (), signer)
        self._connections: dict[tuple[str, str | None], Backend] = {}
        self._cache_tree = LocalTree(self.cache, owner=owner)
        self.thread_quota = thread_quota  # bytes a thread home may hold
        self.disks = disks  # None: homes are directories, their size sampled while used
        self.volume_size = volume_size  # bytes the filesystem of a volume without a quota holds

    def clear_staging(self) -> None:
        """Remove what a server that crashed left on its way to a bucket. Only the server
        owning the home may call it, at its start."""
        shutil.rmtree(self.staging, ignore_errors=True)

    @property
    def shared(self) -> list[Path]:
        """The host directories that sandboxes bind from."""
        found = [self.cache]
        if self.disk is not None:
            found += [self.disk.base / "threads", self.disk.base / "volumes"]
        return found

    def thread(self, org_id: str, thread_id: str) -> Place:
        size = self.thread_quota if self.disks is not None else None
        return Place(self.main, ("threads", org_id, thread_id), "thread_mount_error", size=size)

    @contextlib.asynccontextmanager
    async def held(self, place: Place) -> AsyncIterator[None]:
        """Keep the filesystem of ``place`` mounted while the block runs (when it has one)."""
        if self.disks is None or place.size is None:
            yield
            return
        workspace = await anyio.to_thread.run_sync(place.backend.workspace, place.key)
        async with self.disks.hold(workspace, place.size) as fresh:  # or a DiskError
            if fresh:  # a copy lost with its image: nothing of it was synced
                await anyio.to_thread.run_sync(place.backend.renewed, place.key)
            yield

    def full(self, place: Place) -> bool:
        """Whether a held place's filesystem has no room left (False without one)."""
        if self.disks is None or place.size is None:
            return False
        return self.disks.full(place.workspace, place.size)

    def volume(self, volume: Volume) -> Place:
        if volume.url is None:
            key = ("volumes", volume.org_id, volume.id)  # a new volume of an old slug starts empty
            # Every managed volume gets a filesystem of its own where they can be made, with
            # a quota or not: a bound directory would show its host path in the sandbox's
            # /proc/self/mountinfo (the root of a filesystem shows as "/").
            size = (volume.quota_bytes or self.volume_size) if self.disks is not None else None
            return Place(self.main, key, "volume_mount_error", volume.read_only, size)
        backend = self._connections.get((volume.id, volume.url))
        if backend is None:
            prefix = ("connections", volume.org_id, volume.id)
            backend = cloud(
                volume.url, volume.options, self.cache, self.owner, self.staging, prefix
            )
            self._connections[(volume.id, volume.url)] = backend
        return Place(backend, (), "storage_mount_error", volume.read_only)

    async def sweep(self, live: Callable[[], Awaitable[dict[str, set[str]]]]) -> int:
        """Remove the files of deleted volumes, and the cached copies of deleted volumes and
        storage connections (never a connection's bucket); the number of volumes cleared.

        ``live`` gives the volume ids by organisation. Only organisations it names are
        swept, so another server's volumes in a shared bucket are never touched; and it is
        asked after the listing, so a volume made meanwhile is never taken for a deleted one.
        """
        stored = [
            ("volumes", org, volume)
            for org in await self.main.children(("volumes",))
            for volume in await self.main.children(("volumes", org))
        ]
        cached = await anyio.to_thread.run_sync(self._cached_volumes)
        ids = await live()
        removed: set[str] = set()
        for key in stored:
            if _deleted(key, ids) and (
                self.disk is None or await self._unmounted(self.disk.base, key)
            ):
                await self.main.destroy(key)
                removed.add(key[-1])
        for names in cached:
            if _deleted(names, ids) and await self._unmounted(self.cache, names):
                await anyio.to_thread.run_sync(forget_copy, self._cache_tree, names)
                removed.add(names[-1])
        return len(removed)

    async def _unmounted(self, base: Path, key: Key) -> bool:
        """Whether a deleted volume's filesystem (if it has one) is unmounted and its image
        gone; False while an execution or a request still holds it (the next sweep)."""
        directory = base.joinpath(*key)
        if self.disks is None:  # an image a root server made before
            image_of(directory).unlink(missing_ok=True)
            return True
        return await self.disks.discard(directory)

    def _cached_volumes(self) -> list[Key]:
        tree = self._cache_tree
        return [
            (*prefix, org, volume)
            for prefix in (("server", "volumes"), ("connections",))
            for org in tree.children(prefix)
            for volume in tree.children((*prefix, org))
        ]


def _deleted(key: Key, ids: dict[str, set[str]]) -> bool:
    """Whether ``key`` names a volume of a known organisation that is no longer; never a
    name of the server's own (``.<volume>.new``, where an image is mounted on its way in)."""
    org, volume = key[-2], key[-1]
    return org in ids and volume not in ids[org] and not volume.startswith(".")


def cloud(
    url: str,
    options: dict[str, Any],
    cache: Path,
    owner: int | None,
    staging: Path,
    cache_prefix: Key = (),
    signer: UrlSigner | None = None,
) -> CloudBackend:
    """A backend on the bucket (and prefix) of ``url``; ``options`` are fsspec's."""
    scheme = url.partition("://")[0]
    if scheme not in CLOUD_SCHEMES:
        raise ValidationError(f"unsupported storage URL {scheme}://: use s3://, gs:// or az://")
    settings: dict[str, Any] = {k: _literal(v) for k, v in options.items()}
    if scheme == "s3":  # botocore would otherwise sign some URLs with SigV2
        config = {"signature_version": "s3v4", **settings.get("config_kwargs", {})}
        settings["config_kwargs"] = config
    fs, base = _filesystem(url, scheme, settings)
    return CloudBackend(fs, base, cache, owner, staging, cache_prefix, signer)


def _filesystem(url: str, scheme: str, settings: dict[str, Any]) -> tuple[Any, str]:
    if scheme in ("gs", "gcs"):
        # The core class, by name: the one gcsfs registers by default probes every bucket
        # over gRPC first, which hangs on anything but Google itself (an emulator).
        from gcsfs.core import GCSFileSystem

        fs = GCSFileSystem(skip_instance_cache=True, **settings)
        base: str = fs._strip_protocol(url)
        return fs, base
    found: tuple[Any, str] = fsspec.core.url_to_fs(url, skip_instance_cache=True, **settings)
    return found


def _literal(value: Any) -> Any:
    """Options from the command line are strings; fsspec wants ``anon=False`` and
    ``retries=1``, not "false" and "1"."""
    if not isinstance(value, str):
        return value
    number = decimal(value)
    if number is not None:
        return number
    return {"true": True, "false": False}.get(value, value)
