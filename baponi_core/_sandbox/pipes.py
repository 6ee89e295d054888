"""The server's ends of a sandboxed process's stdin, stdout and stderr.

A process's pipes are its own: the agent passes the other ends to it alone. What comes
out of them is the process's to say, so it is only ever copied, never interpreted here.
"""

from __future__ import annotations

import os

import anyio

READ_CHUNK = 65536


class Pipe:
    """One end of a pipe, non-blocking; closing it wakes any task waiting on it."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            anyio.notify_closing(fd)
            os.close(fd)


class PipeReader(Pipe):
    async def receive(self, max_bytes: int = READ_CHUNK) -> bytes:
        """The next bytes written, as soon as there are some; ``b""`` once every writer
        has gone (then the pipe is closed)."""
        while self.fd is not None:
            try:
                await anyio.wait_readable(self.fd)
            except anyio.ClosedResourceError:  # closed by another task meanwhile
                break
            try:
                chunk = os.read(self.fd, max_bytes)
            except BlockingIOError:
                continue
            if not chunk:
                self.close()
            return chunk
        return b""


class PipeWriter(Pipe):
    async def send(self, data: bytes) -> None:
        """Write all of ``data``, waiting while the pipe is full; BrokenPipeError once the
        process no longer reads."""
        view = memoryview(data)
        while view:
            if self.fd is None:
                raise BrokenPipeError("the pipe is closed")
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self.fd)
