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

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from baponi_core.errors import Conflict, NotFound, ValidationError
from baponi_core.storage.backend import RESERVED, Key
from baponi_core.storage.disk import CHUNK, write
from baponi_core.storage.local import LocalTree
from baponi_core.storage.paths import parts

log = logging.getLogger(__name__)


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
    for rel, obj in stored.items():
        known = manifest.files.get(rel)
        if known is not None and known[0] == obj.tag:
            continue
        fetched = _fetch_over(fs, f"{root}/{rel}", tree, key + parts(rel), obj.tag)
        if fetched is not None:
            manifest.files[rel] = fetched
    for rel in [rel for rel in manifest.files if rel not in stored]:
        known = manifest.files.pop(rel)
        if local.get(rel) == known[1:]:  # deleted from storage, untouched here: follow
            with contextlib.suppress(FileNotFoundError):
                tree.delete(key + parts(rel))
    manifest.save()


def push(fs: Any, root: str, tree: LocalTree, key: Key, manifest: Manifest) -> None:
    local = {rel: state for rel, state in tree.files(key).items() if not _reserved(rel)}
    for rel, state in local.items():
        known = manifest.files.get(rel)
        if known is not None and known[1:] == state:
            continue
        manifest.files[rel] = _store(fs, f"{root}/{rel}", tree, key + parts(rel))
        manifest.save()  # a later failure must not upload this one again
    for rel in [rel for rel in manifest.files if rel not in local]:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(f"{root}/{rel}")
        del manifest.files[rel]
    manifest.save()


def _fetch_over(fs: Any, remote: str, tree: LocalTree, names: Key, tag: str) -> Synced | None:
    """Fetch, the stored side winning over whatever code left in the way (a file or link
    where a directory must be, a directory where the file goes): removed, never followed.
    What still cannot be placed is skipped, so one odd object never blocks the root."""
    try:
        return _fetch(fs, remote, tree, names, tag)
    except (NotFound, Conflict):
        _clear_way(tree, names)
    try:
        return _fetch(fs, remote, tree, names, tag)
    except (NotFound, Conflict) as exc:
        log.warning("could not place stored object %s: %s", remote, exc)
        return None


def _clear_way(tree: LocalTree, names: Key) -> None:
    for depth in range(1, len(names)):
        if not tree.exists(names[:depth]):
            with contextlib.suppress(NotFound):
                tree.delete(names[:depth])  # a link or file where a directory belongs
    if tree.exists(names):
        tree.delete(names)  # a directory where the file belongs


def _fetch(fs: Any, remote: str, tree: LocalTree, names: Key, tag: str) -> Synced:
    upload = tree.begin_upload(names)
    try:
        with fs.open(remote, "rb") as source:
            while chunk := source.read(CHUNK):
                write(upload, chunk)
        tree.commit(upload)
        info = os.fstat(upload.fd)
    finally:
        upload.close()
    return tag, info.st_size, info.st_mtime


def _store(fs: Any, remote: str, tree: LocalTree, names: Key) -> Synced:
    fd, _ = tree.open_read(names)
    try:
        with fs.open(remote, "wb") as target:
            while chunk := os.read(fd, CHUNK):
                target.write(chunk)
        info = os.fstat(fd)
    finally:
        os.close(fd)
    obj = fs.info(remote)
    size = int(obj.get("size") or 0)
    return tag_of(obj, size, modified_of(obj)), info.st_size, info.st_mtime
