"""Uploads and downloads of a long-lived sandbox's files, streamed through the pipes of a
process inside it: a file of any size passes through in chunks, never held whole.

An upload is written beside its destination and renamed over it once complete, so one
that fails or is cut short leaves nothing changed; it is bounded by the sandbox's own
file size limit. A download reads the file inside the sandbox (a link resolves in its
view) and sends at most the size announced beforehand.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

import anyio

from baponi_core._errors import ValidationError
from baponi_core._sandbox import Process
from baponi_core._sandboxes import files
from baponi_core._sandboxes.errors import InvalidFileContent, RangeNotSatisfiable
from baponi_core._sandboxes.filesinfo import FileType
from baponi_core._sandboxes.live import DRAIN_S, Completed, Drain, Live

RANGE = re.compile(r"bytes=\s*([0-9]{0,19})\s*-\s*([0-9]{0,19})\s*(?:,.*)?")
KILL_WAIT_S = 5.0  # for an upload's process to end once killed
# tail PATH FIRST [COUNT]: lines FIRST.. of PATH, COUNT of them when given.
LINES = (
    'if [ -z "$3" ]; then exec tail -n "+$2" -- "$1"; fi\ntail -n "+$2" -- "$1" | head -n "$3"\n'
)


@dataclass(frozen=True)
class Span:
    """Bytes ``start`` to ``start + length`` of a file of ``size`` bytes."""

    start: int
    length: int
    size: int

    @property
    def last(self) -> int:
        return self.start + self.length - 1


@dataclass
class Download:
    """A file on its way out. ``span`` is set for a Range request (a 206); ``lines`` for a
    selection of lines, whose length is not known ahead. ``chunks`` must be read to its
    end or closed."""

    name: str
    size: int
    chunks: AsyncIterator[bytes]
    span: Span | None = None
    lines: bool = False
    _process: Process | None = field(default=None, repr=False)

    def close(self) -> None:
        """End the reading process (it dies of SIGPIPE if it is still writing)."""
        if self._process is not None:
            self._process.close()


def byte_range(header: str, size: int) -> Span:
    """The first range of a ``Range`` header; RangeNotSatisfiable when it is not one
    within ``size`` (execd answers any bad range so)."""
    found = RANGE.fullmatch(header.strip())
    if found is None or found.group(1) == found.group(2) == "":
        raise RangeNotSatisfiable(f"range {header[:100]!r} is not satisfiable")
    first, last = found.group(1), found.group(2)
    if first == "":  # the last N bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(size - 1, int(last)) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable(f"range {header[:100]!r} is not within {size} bytes")
    return Span(start, end - start + 1, size)


async def download(
    live: Live,
    path: str,
    *,
    range_header: str | None = None,
    offset: int | None = None,
    limit: int | None = None,
) -> Download:
    """Open ``path`` for reading: whole, a byte range, or ``limit`` lines (all when None)
    from line ``offset`` (counted from 1)."""
    lines = offset is not None or limit is not None
    if lines and range_header:
        raise ValidationError("a Range header and offset/limit cannot be combined")
    if (offset is not None and offset < 1) or (limit is not None and limit < 0):
        raise ValidationError("offset counts lines from 1; limit is 0 or more")
    file = await files.stat(live, files.resolve(live, path), follow=True)
    if file.type is not FileType.FILE:  # a FIFO would hold its reader up for good
        raise ValidationError(f"{path} is not a regular file")
    name = posixpath.basename(file.path.rstrip("/")) or "download"
    span = byte_range(range_header, file.size) if range_header else None
    if lines:
        script = ["sh", "-c", LINES, "sh", file.path, str(offset or 1)]
        argv = [*script, "" if limit is None else str(limit)]
    elif span is not None:
        skip = f"skip={span.start}"
        argv = ["dd", f"if={file.path}", "bs=64K", "iflag=skip_bytes,count_bytes", skip]
        argv += [f"count={span.length}", "status=none"]
    else:
        argv = ["cat", "--", file.path]
    process = await live.start(argv, env=files.TOOLS_ENV)
    bound = span.length if span else file.size
    return Download(name, file.size, _read(process, bound), span, lines, process)


async def _read(process: Process, bound: int) -> AsyncIterator[bytes]:
    """What ``process`` writes, up to ``bound`` bytes (the file may grow meanwhile)."""
    try:
        left = bound
        while left > 0 and (chunk := await process.stdout.receive()):
            yield chunk[:left]
            left -= len(chunk)
    finally:
        process.close()


async def upload(
    live: Live,
    path: str,
    chunks: AsyncIterable[bytes],
    permission: files.Permission,
) -> None:
    """Write ``chunks`` to ``path`` (its parents made), then apply ``permission``."""
    target = files.resolve(live, path)
    temp = files.temporary(target)
    argv = ["sh", "-c", files.WRITE, "sh", temp, target, posixpath.dirname(target)]
    argv += permission.args()
    limit = live.handle.shape.limits.file_size_bytes
    process = await live.start(argv, env=files.TOOLS_ENV, stdin=True)
    try:
        await _feed(process, chunks, limit, path)
        status = await process.wait()
        # The script's tools say at most a line each; its stdout is cat's, redirected.
        err = bytearray()
        with anyio.move_on_after(DRAIN_S):
            await Drain(process.stderr, err, 4096).run()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _abandon(live, process, temp)
        raise
    finally:
        process.close()
    if status != 0:
        files.check(Completed(status, b"", bytes(err)), path)


async def _feed(process: Process, chunks: AsyncIterable[bytes], limit: int, path: str) -> None:
    """Send ``chunks`` to the process's stdin, then its end; stop early (without an end)
    if it has stopped reading, its status then says why."""
    assert process.stdin is not None
    sent = 0
    async for chunk in chunks:
        sent += len(chunk)
        if sent > limit:
            raise InvalidFileContent(f"{path} is larger than the sandbox's {limit >> 20} MiB")
        try:
            await process.stdin.send(chunk)
        except OSError:  # a broken pipe: it has ended
            return
    process.stdin.close()


async def _abandon(live: Live, process: Process, temp: str) -> None:
    """Kill a write cut short before it is complete (an end of input would commit what
    came so far), and remove what it wrote."""
    await process.signal(9)
    with anyio.move_on_after(KILL_WAIT_S):
        await process.wait()
    with contextlib.suppress(Exception):
        await live.run(["rm", "-f", "--", temp], env=files.TOOLS_ENV)
