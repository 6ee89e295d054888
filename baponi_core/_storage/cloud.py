"""Roots in an object store (S3, GCS, Azure Blob) through fsspec, with local workspaces.

Sandboxes need a real directory, so each root has a workspace under the server's cache,
synced (:mod:`sync`) before and after every execution. The Files API talks to the store
directly: listings show what is stored, and signed URLs are the provider's own.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio

from baponi_core._errors import BaponiError, NotFound, Unavailable
from baponi_core._storage.backend import (
    RESERVED,
    Key,
    Signed,
    ensure_workspace,
    make_workspace,
    served,
    sized,
)
from baponi_core._storage.local import MAX_LISTED, Entry, LocalTree
from baponi_core._storage.signing import Grant, Method, UrlSigner
from baponi_core._storage.sync import Manifest, listing, pull, push, staging_file

MARKER = RESERVED + "root"  # an empty object that makes a root without files exist
T = TypeVar("T")
log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"  # beside each workspace: what its last sync left


class CloudBackend:
    """Roots below ``base`` ("bucket/prefix") of ``fs``; workspaces below ``cache``, at
    ``cache_prefix + key``.

    ``staging`` is a directory private to the server, where large files wait to be stored
    in one piece. Where the provider's upload URLs cannot bind a size (an Azure SAS),
    uploads come through this server: ``signer`` signs them and the body is staged until
    exactly the signed size has arrived. Without a signer (storage connections, which the
    Files API does not reach) such uploads are not offered."""

    max_listed = MAX_LISTED  # entries a listing gives at most, as on local disk
    writes_back = True

    def __init__(
        self,
        fs: Any,
        base: str,
        cache: Path,
        owner: int | None,
        staging: Path,
        cache_prefix: Key = (),
        signer: UrlSigner | None = None,
    ) -> None:
        self.fs = fs
        self.base = base.rstrip("/")
        self.cache = cache
        self.cache_prefix = cache_prefix
        self.signer = signer
        self.staging = staging
        self.tree = LocalTree(cache, owner=owner)
        self.owner = owner
        self._locks: dict[Key, anyio.Lock] = {}
        self._made: set[Key] = set()  # roots known to have their marker

    def _remote(self, key: Key, names: tuple[str, ...] = ()) -> str:
        return "/".join(p for p in (self.base, *key, *names) if p)

    def workspace(self, key: Key) -> Path:
        return make_workspace(self.cache, self.cache_prefix + key, self.owner)

    def renewed(self, key: Key) -> None:
        space = self.workspace(key)
        space.with_name(space.name + MANIFEST_SUFFIX).unlink(missing_ok=True)

    def _manifest(self, key: Key) -> Manifest:
        space, made = ensure_workspace(self.cache, self.cache_prefix + key, self.owner)
        manifest = space.with_name(space.name + MANIFEST_SUFFIX)
        if made:  # a manifest without its workspace would make the push delete everything
            manifest.unlink(missing_ok=True)
        return Manifest(manifest)

    async def pull(self, key: Key) -> None:
        await self._synced(pull, key)

    async def push(self, key: Key) -> None:
        await self._synced(partial(push, staging=self.staging), key)
        if key not in self._made:  # a root that ran code exists, even with no files
            await self.create(key)
            self._made.add(key)

    async def _synced(self, sync: Callable[..., None], key: Key) -> None:
        """One sync of a root at a time: executions sharing a volume share its workspace."""
        lock = self._locks.setdefault(key, anyio.Lock())
        try:
            async with lock:
                await self._call(
                    lambda: sync(
                        self.fs,
                        self._remote(key),
                        self.tree,
                        self.cache_prefix + key,
                        self._manifest(key),
                    )
                )
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(key, None)

    async def exists(self, key: Key) -> bool:
        return await self._call(lambda: bool(self.fs.exists(self._remote(key))))

    async def create(self, key: Key) -> None:
        marker = self._remote(key, (MARKER,))
        if not await self._call(lambda: bool(self.fs.exists(marker))):
            await self._call(lambda: self.fs.pipe_file(marker, b""))

    async def entries(self, key: Key, prefix: tuple[str, ...]) -> list[Entry]:
        stored = await self._call(lambda: listing(self.fs, self._remote(key)))
        wanted = "/".join(prefix)
        found: dict[str, Entry] = {}
        for rel, obj in stored.items():
            if wanted and rel != wanted and not rel.startswith(wanted + "/"):
                continue
            found[rel] = Entry(rel, obj.size, obj.modified, False)
            parent = rel.rpartition("/")[0]
            while parent and len(parent) > len(wanted):  # object stores imply directories
                seen = found.get(parent)
                newest = max(obj.modified, seen.modified if seen else 0.0)
                found[parent] = Entry(parent, 0, newest, True)
                parent = parent.rpartition("/")[0]
        return sorted(found.values(), key=lambda e: e.path)[: self.max_listed]

    async def delete(self, key: Key, names: tuple[str, ...]) -> None:
        remote = self._remote(key, names)

        def remove() -> None:
            if self.fs.isfile(remote):
                self.fs.rm_file(remote)
            elif listing(self.fs, remote):
                self.fs.rm(remote, recursive=True)
            else:
                raise NotFound("file not found")

        await self._call(remove)

    async def children(self, key: Key) -> list[str]:
        def listed() -> list[str]:
            self.fs.invalidate_cache(self._remote(key))
            try:
                found = self.fs.ls(self._remote(key), detail=True)
            except FileNotFoundError:
                return []
            names = [
                info["name"].rstrip("/").rpartition("/")[2]
                for info in found
                if info.get("type") == "directory"
            ]
            return sorted(name for name in names if name)

        return await self._call(listed)

    async def destroy(self, key: Key) -> None:
        remote = self._remote(key)

        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(remote, recursive=True)

        await self._call(remove)
        await anyio.to_thread.run_sync(forget_copy, self.tree, self.cache_prefix + key)

    async def usage(self, key: Key) -> int:
        stored = await self._call(lambda: listing(self.fs, self._remote(key)))
        return sum(obj.size for obj in stored.values())

    async def read(self, key: Key, names: tuple[str, ...], max_bytes: int) -> bytes | None:
        remote = self._remote(key, names)

        def fetch() -> bytes | None:
            size = int(self.fs.info(remote).get("size") or 0)
            return None if size > max_bytes else bytes(self.fs.cat_file(remote))

        return await self._call(fetch)

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
        remote = self._remote(key, names)
        if method == "GET" and not await self._call(lambda: bool(self.fs.isfile(remote))):
            raise NotFound("file not found")
        from baponi_core._storage.presign import binds_size, presign  # SDKs load late

        if method == "PUT" and not binds_size(self.fs) and self.signer is not None:
            grant = Grant(method, key, "/".join(names), size, expires)
            return served(self.signer, grant, content_type, base_url)
        ttl = expires - int(time.time())
        url, headers = await self._call(
            lambda: presign(self.fs, remote, method, ttl, content_type, size)
        )
        return Signed(url, method, headers, expires)

    async def upload(self, grant: Grant, chunks: AsyncIterator[bytes]) -> None:
        """Stage the body on the server's disk, then store it in one piece: a body of the
        wrong length never reaches the bucket."""
        if self.signer is None or grant.size is None:
            raise NotFound("not found")
        remote = self._remote(grant.root, tuple(grant.path.split("/")))
        staged = await anyio.to_thread.run_sync(staging_file, self.staging)
        try:
            async with aclosing(sized(chunks, grant.size)) as body:
                async for chunk in body:
                    await anyio.to_thread.run_sync(staged.write, chunk)
            await anyio.to_thread.run_sync(staged.flush)
            await self._call(lambda: self.fs.put_file(staged.name, remote))
        finally:
            await anyio.to_thread.run_sync(staged.close)  # and gone

    async def _call(self, work: Callable[[], T]) -> T:
        """Run blocking storage calls in a worker; a missing object is NotFound, any other
        storage failure is Unavailable, never a stack trace."""
        try:
            return await anyio.to_thread.run_sync(work)
        except FileNotFoundError as exc:
            raise NotFound("file not found") from exc
        except BaponiError:
            raise
        except NotImplementedError as exc:  # credentials that cannot sign (presign says why)
            raise Unavailable(f"storage cannot sign URLs: {exc}") from exc
        except Exception as exc:
            log.warning("storage call failed: %r", exc)
            raise Unavailable(f"storage unavailable ({type(exc).__name__})") from exc


def forget_copy(tree: LocalTree, names: Key) -> None:
    """Delete a root's workspace in the cache and the manifest beside it."""
    for name in (names[-1], names[-1] + ".manifest.json"):
        with contextlib.suppress(NotFound):
            tree.delete((*names[:-1], name))
