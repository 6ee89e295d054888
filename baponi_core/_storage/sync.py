"""Keep a workspace on local disk and a root in an fsspec filesystem in step.

The manifest remembers, for every file of the last sync, the stored object's tag (ETag or
generation) and the local copy's size and mtime. A pull fetches only objects whose tag
changed and removes local copies of objects deleted since; a push stores only files whose
size or mtime changed and deletes objects whose file is gone. Local changes that were never
pushed (a push that failed) survive a pull unless the object changed too: the stored side
wins then, as it was written later through the Files API.

Regular files and directories are synced; links, FIFOs, sockets and hard-linked files made by
sandboxed code are not (and never followed). Blocking: run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeVar

import fsspec.asyn

from baponi_core._errors import Conflict, NotFound, ValidationError
from baponi_core._storage.backend import RESERVED, Key
from baponi_core._storage.disk import CHUNK, write
from baponi_core._storage.local import LocalTree
from baponi_core._storage.paths import parts

log = logging.getLogger(__name__)
T = TypeVar("T")

# Files up to SMALL_BYTES move whole, in groups transferred concurrently (a fresh cache of
# many small files is bound by round trips, not bandwidth); larger ones stream one by one.
SMALL_BYTES = 8 << 20
BATCH_BYTES = 32 << 20  # what a group may hold in memory
BATCH_FILES = 32  # requests in flight at once
# A file that code (in a volume another execution shares) removed, or replaced by a link
# or directory, since the workspace was scanned: left for the next push to see as it is.
VANISHED = (NotFound, ValidationError)


@dataclass(frozen=True)
class Stored:
    """An object as listed by the filesystem."""

    tag: str
    size: int
    modified: float


Synced = tuple[str, int, float]  # object tag, local size, local mtime


def listing(fs: Any, root: str) -> dict[str, Stored]:
    """The files stored below ``root`` by relative path, the server's own objects and
    names that are not valid request paths (written to a bucket by other means) left out."""
    found: dict[str, Stored] = {}
    fs.invalidate_cache(root)  # objects come and go through signed URLs and other clients
    try:
        infos = fs.find(root, detail=True)
    except FileNotFoundError:
        return found
    for path, info in infos.items():
        rel = path[len(root) :].lstrip("/")
        if info.get("type") == "directory" or not rel or rel.endswith("/"):
            continue
        try:
            parts(rel)  # only names a request could use are brought in
        except ValidationError:
            log.warning("ignoring stored object with an unusable name: %r", rel)
            continue
        if _reserved(rel):
            continue
        size = int(info.get("size") or 0)
        modified = modified_of(info)
        found[rel] = Stored(tag_of(info, size, modified), size, modified)
    return found


def _reserved(rel: str) -> bool:
    return any(name.startswith(RESERVED) for name in rel.split("/"))


def tag_of(info: dict[str, Any], size: int, modified: float) -> str:
    for field in ("ETag", "etag", "generation", "md5Hash", "content_settings"):
        if info.get(field):
            return str(info[field])
    return f"{size}:{modified}"


def modified_of(info: dict[str, Any]) -> float:
    for field in ("LastModified", "last_modified", "updated", "mtime", "created"):
        value = info.get(field)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


class Manifest:
    """What the last sync left, kept beside (never inside) the workspace."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            raw = json.loads(path.read_text())
            self.files: dict[str, Synced] = {k: (v[0], v[1], v[2]) for k, v in raw.items()}
        except FileNotFoundError:
            self.files = {}

    def save(self) -> None:
        staging = self.path.with_name(self.path.name + ".new")
        staging.write_text(json.dumps(self.files))
        os.replace(staging, self.path)


def pull(fs: Any, root: str, tree: LocalTree, key: Key, manifest: Manifest) -> None:
    stored = listing(fs, root)
    local = tree.files(key)
    wanted = [rel for rel, obj in stored.items() if manifest.files.get(rel, ("",))[0] != obj.tag]
    small, large = _by_size(wanted, {rel: stored[rel].size for rel in wanted})
    for group in small:
        # whole small objects, fetched together: one GET each, no HEAD (the listing has all)
        reads = [_reader(fs, f"{root}/{rel}", stored[rel].size) for rel in group]
        contents = concurrently(fs, reads)
        for rel, data in zip(group, contents, strict=True):
            if isinstance(data, BaseException):
                _raise_unless_gone(data)
            elif len(data) != stored[rel].size:  # rewritten since, or cut short: stream it
                large.append(rel)
            else:
                _fetched(manifest, rel, tree, key, stored[rel].tag, partial(io.BytesIO, data))
    for rel in large:
        opener = partial(fs.open, f"{root}/{rel}", "rb")
        _fetched(manifest, rel, tree, key, stored[rel].tag, opener)
    for rel in [rel for rel in manifest.files if rel not in stored]:
        known = manifest.files.pop(rel)
        if local.get(rel) == known[1:]:  # deleted from storage, untouched here: follow
            with contextlib.suppress(FileNotFoundError):
                tree.delete(key + parts(rel))
    manifest.save()


def push(fs: Any, root: str, tree: LocalTree, key: Key, manifest: Manifest, staging: Path) -> None:
    local = {rel: state for rel, state in tree.files(key).items() if not _reserved(rel)}
    changed = [rel for rel, state in local.items() if manifest.files.get(rel, ("",))[1:] != state]
    small, large = _by_size(changed, {rel: local[rel][0] for rel in changed})
    for group in small:
        large += _push_group(fs, root, tree, key, manifest, group)
    for rel in large:
        with contextlib.suppress(*VANISHED):
            manifest.files[rel] = _store(fs, f"{root}/{rel}", tree, key + parts(rel), staging)
            manifest.save()
    gone = [rel for rel in manifest.files if rel not in local]
    removed = concurrently(fs, [_remover(fs, f"{root}/{rel}") for rel in gone])
    failed = [exc for exc in removed if isinstance(exc, BaseException)]
    for rel, result in zip(gone, removed, strict=True):
        if not isinstance(result, BaseException) or isinstance(result, FileNotFoundError):
            del manifest.files[rel]
    manifest.save()
    for exc in failed:
        _raise_unless_gone(exc)


def _push_group(
    fs: Any, root: str, tree: LocalTree, key: Key, manifest: Manifest, group: list[str]
) -> list[str]:
    """Store a group of small files together; gives those that grew too large meanwhile."""
    read: dict[str, tuple[bytes, tuple[int, float]] | None] = {}
    for rel in group:
        with contextlib.suppress(*VANISHED):
            read[rel] = _read(tree, key + parts(rel))
    small = {rel: got for rel, got in read.items() if got is not None}
    calls = [_writer(fs, f"{root}/{rel}", data) for rel, (data, _) in small.items()]
    results = dict(zip(small, concurrently(fs, calls), strict=True))
    for rel, tag in list(results.items()):
        if isinstance(tag, BaseException):  # once more, alone: a transient failure passes
            log.info("storing %s again after %r", rel, tag)
            (results[rel],) = concurrently(fs, [_writer(fs, f"{root}/{rel}", small[rel][0])])
    for rel, tag in results.items():
        if not isinstance(tag, BaseException):
            manifest.files[rel] = (tag, *small[rel][1])
    manifest.save()  # a later failure must not upload these again
    for tag in results.values():
        if isinstance(tag, BaseException):
            raise tag
    return [rel for rel, got in read.items() if got is None]


def concurrently(fs: Any, calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T | BaseException]:
    """Run ``calls`` on the filesystem's event loop (fsspec's cloud filesystems are
    asynchronous), BATCH_FILES at a time; each gives its result or its exception."""

    async def gathered() -> list[T | BaseException]:
        results: list[T | BaseException] = []
        for start in range(0, len(calls), BATCH_FILES):
            batch = calls[start : start + BATCH_FILES]
            results += await asyncio.gather(*(call() for call in batch), return_exceptions=True)
        return results

    return list(fsspec.asyn.sync(fs.loop, gathered)) if calls else []


def _reader(fs: Any, remote: str, size: int) -> Callable[[], Awaitable[bytes]]:
    """The listed size and no more: an object rewritten since is fetched on the next pull
    (its tag changed), and memory stays bounded by the listing."""

    async def read() -> bytes:
        return bytes(await fs._cat_file(remote, start=0, end=size)) if size else b""

    return read


def _writer(fs: Any, remote: str, data: bytes) -> Callable[[], Awaitable[str]]:
    async def write_then_tag() -> str:
        await fs._pipe_file(remote, data)
        obj = await fs._info(remote)
        size = int(obj.get("size") or 0)
        if size != len(data):
            raise OSError(f"stored {size} of {len(data)} bytes")
        return tag_of(obj, size, modified_of(obj))

    return write_then_tag


def _remover(fs: Any, remote: str) -> Callable[[], Awaitable[None]]:
    return lambda: fs._rm_file(remote)


def _raise_unless_gone(exc: BaseException) -> None:
    """An object deleted since it was listed is simply not there any more."""
    if not isinstance(exc, FileNotFoundError):
        raise exc


def _by_size(rels: list[str], sizes: dict[str, int]) -> tuple[list[list[str]], list[str]]:
    """Small files in groups to move together, each group holding at most BATCH_FILES files
    and BATCH_BYTES in memory; large files, to stream one at a time."""
    groups: list[list[str]] = []
    held = 0
    for rel in (rel for rel in rels if sizes[rel] <= SMALL_BYTES):
        if not groups or held + sizes[rel] > BATCH_BYTES or len(groups[-1]) >= BATCH_FILES:
            groups.append([])
            held = 0
        groups[-1].append(rel)
        held += sizes[rel]
    return groups, [rel for rel in rels if sizes[rel] > SMALL_BYTES]


def _read(tree: LocalTree, names: Key) -> tuple[bytes, tuple[int, float]] | None:
    """A small file's bytes, and its size and mtime once read; None if it is no longer
    small (code in a shared volume may still be writing it)."""
    fd, _ = tree.open_read(names)
    try:
        data = bytearray()
        while len(data) <= SMALL_BYTES and (chunk := os.read(fd, CHUNK)):
            data += chunk
        info = os.fstat(fd)
    finally:
        os.close(fd)
    return None if len(data) > SMALL_BYTES else (bytes(data), (info.st_size, info.st_mtime))


def _fetched(
    manifest: Manifest,
    rel: str,
    tree: LocalTree,
    key: Key,
    tag: str,
    source: Callable[[], ContextManager[BinaryIO]],
) -> None:
    synced = _fetch_over(source, tree, key + parts(rel), tag)
    if synced is not None:
        manifest.files[rel] = synced


def _fetch_over(
    source: Callable[[], ContextManager[BinaryIO]], tree: LocalTree, names: Key, tag: str
) -> Synced | None:
    """Fetch, the stored side winning over whatever code left in the way (a file or link
    where a directory must be, a directory where the file goes): removed, never followed.
    What still cannot be placed is skipped, so one odd object never blocks the root."""
    try:
        return _fetch(source, tree, names, tag)
    except (NotFound, Conflict):
        _clear_way(tree, names)
    except FileNotFoundError:  # deleted since it was listed
        return None
    try:
        return _fetch(source, tree, names, tag)
    except (NotFound, Conflict) as exc:
        log.warning("could not place stored object %s: %s", "/".join(names), exc)
        return None


def _clear_way(tree: LocalTree, names: Key) -> None:
    for depth in range(1, len(names)):
        if not tree.exists(names[:depth]):
            with contextlib.suppress(NotFound):
                tree.delete(names[:depth])  # a link or file where a directory belongs
    if tree.exists(names):
        tree.delete(names)  # a directory where the file belongs


def _fetch(
    source: Callable[[], ContextManager[BinaryIO]], tree: LocalTree, names: Key, tag: str
) -> Synced:
    upload = tree.begin_upload((), names)
    try:
        with source() as stream:
            while chunk := stream.read(CHUNK):
                write(upload, chunk)
        tree.commit(upload)
        info = os.fstat(upload.fd)
    finally:
        upload.close()
    return tag, info.st_size, info.st_mtime


def _store(fs: Any, remote: str, tree: LocalTree, names: Key, staging: Path) -> Synced:
    """A large file, copied to a private staging file and stored from there in one piece
    (``put_file`` commits nothing of a failed upload; a file object written in a ``with``
    block would commit what it had). fsspec never gets a path inside a workspace."""
    fd, _ = tree.open_read(names)
    try:
        with staging_file(staging) as staged:
            while chunk := os.read(fd, CHUNK):
                staged.write(chunk)
            staged.flush()
            info = os.fstat(fd)
            fs.put_file(staged.name, remote)
    finally:
        os.close(fd)
    obj = fs.info(remote)
    size = int(obj.get("size") or 0)
    if size != info.st_size:
        raise OSError(f"stored {size} of {info.st_size} bytes")
    return tag_of(obj, size, modified_of(obj)), info.st_size, info.st_mtime


def staging_file(staging: Path) -> IO[bytes]:
    """A temporary file in the server's private staging directory, gone once closed."""
    staging.mkdir(mode=0o700, exist_ok=True)
    return tempfile.NamedTemporaryFile(dir=staging, prefix="staged-")
