"""The relay phase of an egress connection: once the proxy has judged and connected it,
its two sockets are pumped both ways with ``splice(2)``, each way through a pipe of its
own, so its bytes never enter the interpreter (the loop only moves page references
between the kernel's buffers). Driven by the event loop's readers and writers: no thread,
no task per connection.

The bounds stay exact: every splice out of a socket asks for no more than the pipe has
room for (the per-way buffer) and the sandbox still may move (its byte budget, counted
from what splice returns, so never exceeded); an end of file is passed on as a
half-close once what came before it is sent; the caller's idle timer reads
:attr:`Relay.last`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
TURNS = 4  # in and out, per wake-up of one way: then the loop's other callbacks


@dataclass
class Budget:
    """The bytes a sandbox may still move, all its connections together; ``moved`` is
    what they have moved."""

    total: int
    moved: int = 0

    @property
    def left(self) -> int:
        return max(0, self.total - self.moved)


@dataclass
class Way:
    """One way of a relay: ``source`` into its pipe, the pipe into ``sink``; ``prefix``
    (the proxy's own bytes, such as a rewritten request head) goes to ``sink`` first."""

    source: socket.socket
    sink: socket.socket
    prefix: bytes
    size: int  # what the pipe may hold (asked for; less where the kernel gives less)
    held: int = 0  # bytes in the pipe now
    full: bool = False  # the pipe took no more (its slots, not only its bytes, run out)
    ended: bool = False  # the source said end of file
    shut: bool = False  # ... and it was passed on to the sink
    pipe: tuple[int, int] = field(default=(-1, -1))

    def open_pipe(self) -> None:
        self.pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # A bigger pipe is fewer wake-ups; over the user's pipe allowance the kernel
        # refuses it, and the default one (64 KiB) is as correct, only slower.
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pipe[1], fcntl.F_SETPIPE_SZ, self.size)
        self.size = min(self.size, fcntl.fcntl(self.pipe[1], fcntl.F_GETPIPE_SZ))

    @property
    def flushed(self) -> bool:
        return self.held == 0 and not self.prefix

    def close_pipe(self) -> None:
        for fd in self.pipe:
            if fd >= 0:
                os.close(fd)
        self.pipe = (-1, -1)


class Relay:
    """Both ways between ``client`` and ``upstream`` (connected, non-blocking sockets,
    owned by the relay from here on) until both have ended, it is closed, or an end
    fails. ``on_end`` is called once, when the sockets are closed."""

    def __init__(
        self,
        client: socket.socket,
        upstream: socket.socket,
        budget: Budget,
        *,
        buffer_bytes: int,
        to_client: bytes,
        to_upstream: bytes,
        on_end: Callable[[], None],
    ) -> None:
        self.budget, self.on_end = budget, on_end
        self.ways = (
            Way(client, upstream, to_upstream, buffer_bytes),
            Way(upstream, client, to_client, buffer_bytes),
        )
        self.last = time.monotonic()  # bytes last moved
        self.draining = False  # reading has stopped: what is held is sent, then closed
        self.ended = False
        self._loop = asyncio.get_running_loop()
        self._watched: set[tuple[int, bool]] = set()  # (descriptor, for writing)

    def start(self) -> None:
        try:
            for way in self.ways:
                way.open_pipe()
        except OSError:
            self.abort()
            return
        self._update()

    def close(self) -> None:
        """Read nothing more; close once what is held is sent."""
        self.draining = True
        self._update()

    def abort(self) -> None:
        """Close both sockets now, whatever is held."""
        if self.ended:
            return
        self.ended = True
        for fd, writing in list(self._watched):
            (self._loop.remove_writer if writing else self._loop.remove_reader)(fd)
        self._watched.clear()
        for way in self.ways:
            way.close_pipe()
            way.source.close()
        self.on_end()

    def _update(self) -> None:
        """Watch for what each way can do next; close when nothing is left to do."""
        if self.ended:
            return
        if all(way.shut for way in self.ways) or (
            self.draining and all(way.flushed for way in self.ways)
        ):
            self.abort()
            return
        for way in self.ways:
            self._watch(way.source.fileno(), False, self._reading(way), way)
            self._watch(way.sink.fileno(), True, not way.flushed, way)

    def _watch(self, fd: int, writing: bool, want: bool, way: Way) -> None:
        key = (fd, writing)
        if want and key not in self._watched:
            self._watched.add(key)
            (self._loop.add_writer if writing else self._loop.add_reader)(fd, self._run, way)
        elif not want and key in self._watched:
            self._watched.discard(key)
            (self._loop.remove_writer if writing else self._loop.remove_reader)(fd)

    def _reading(self, way: Way) -> bool:
        return not (way.ended or self.draining or way.full) and way.held < way.size

    def _run(self, way: Way) -> None:
        """Move what this way can move now, in and out in turn, until neither goes or
        it has had its turns (fewer passes through the loop, and none kept waiting)."""
        try:
            moving, turns = True, TURNS
            while moving and turns and not self.ended:
                turns -= 1
                moving = not way.flushed and self._send(way)
                moving = (self._reading(way) and self._fill(way)) or moving
                self._pass_end(way)
        except OSError:  # reset, refused, gone: the connection is over
            self.abort()
            return
        self._update()

    def _fill(self, way: Way) -> bool:
        """From the source into the pipe, within the room and the sandbox's bytes;
        whether anything came (an end of file included)."""
        want = min(way.size - way.held, self.budget.left)
        try:
            if want > 0:
                got = os.splice(way.source.fileno(), way.pipe[1], want, flags=SPLICE)
            elif way.source.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                self.close()  # the budget is spent: an end of file may still pass, a byte not
                return False
            else:
                got = 0
        except BlockingIOError:
            # With bytes in the pipe this may be its slots running out before its bytes:
            # wait for the sink to take some rather than spin.
            way.full = way.held > 0
            return False
        if got == 0:
            way.ended = True
        else:
            way.held += got
            self.budget.moved += got
            self.last = time.monotonic()
        return True

    def _send(self, way: Way) -> bool:
        """The prefix, then from the pipe into the sink; whether anything went."""
        try:
            if way.prefix:
                sent = way.sink.send(way.prefix, socket.MSG_NOSIGNAL)
                way.prefix = way.prefix[sent:]
                return True
            way.held -= os.splice(way.pipe[0], way.sink.fileno(), way.held, flags=SPLICE)
        except BlockingIOError:
            return False
        way.full = False
        self.last = time.monotonic()
        return True

    def _pass_end(self, way: Way) -> None:
        if way.ended and way.flushed and not way.shut:
            way.shut = True
            way.sink.shutdown(socket.SHUT_WR)
