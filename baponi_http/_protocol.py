"""The server's HTTP/1.1 protocol: uvicorn's httptools protocol (llhttp, a C parser), with
the bounds in time and size that a hostile client needs.

uvicorn's keep-alive timer stops at a request's first byte, and neither llhttp nor
httptools bounds a request head (httptools gathers one header field or value across
reads into one string). So a client that connects and sends nothing, or a few bytes at a
time, or a head without end, or a body that never ends, would hold the connection (and
memory, and an upload's open file) forever. :class:`BoundedHttpTools` closes a
connection that has sent no whole request head within ``timeout_keep_alive`` seconds of
opening or of its last response, or no byte of a body for as long while the server is
reading it, and refuses with a 400 a head (trailers included) over :data:`MAX_HEAD`."""

from __future__ import annotations

import asyncio
import enum

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# h11's bound (this server's parser before) and Node's: far above what any client sends.
MAX_HEAD = 16 * 1024


class HeadTooLarge(Exception):
    """Raised in a parser callback, which stops the parse: uvicorn then answers a 400."""


class Phase(enum.Enum):
    """Where the parser is in the client's current request."""

    HEAD = enum.auto()  # awaiting or reading a request head
    BODY = enum.auto()  # the head is in, not yet the end of its body
    UPGRADED = enum.auto()  # the WebSocket protocol has the connection, with its own timers


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head timer, a body-stall timer and a head bound."""

    _phase = Phase.HEAD
    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0  # URL and header fields of the current request, trailers included
    # Bytes read in a row that neither finished a head nor carried body: what the parser
    # may be holding of a head (or trailers) that has not reached a callback yet.
    _idle_bytes = 0
    _progressed = False  # the read being parsed finished a head or carried body

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._progressed = False
        super().data_received(data)
        if self.transport.is_closing() or self._phase is Phase.UPGRADED:
            return
        self._idle_bytes = 0 if self._progressed else self._idle_bytes + len(data)
        if self._idle_bytes > MAX_HEAD:
            self.logger.warning("Request head too large.")
            self.send_400_response("Request head too large.")
            return
        self._watch_body()

    def handle_websocket_upgrade(self) -> None:
        self._phase = Phase.UPGRADED
        self._stop_timers()
        super().handle_websocket_upgrade()

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._phase = Phase.BODY
        self._progressed = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def on_body(self, body: bytes) -> None:
        self._progressed = True
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = Phase.HEAD
        self._progressed = True
        self._watch_body()  # stops the body's clock
        if not self._owes_response():  # answered before its body was in: next, a head
            self._await_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        idle = self._phase is Phase.HEAD and not self._owes_response()
        if idle and not self.transport.is_closing():
            self._await_head()

    # The bounds

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD:
            raise HeadTooLarge

    def _owes_response(self) -> bool:
        """A request whose head is in is not answered yet (the last one parsed, which a
        pipelined one waits behind)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _await_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        idle = self._phase is Phase.HEAD and not self._owes_response()
        if idle and not self.transport.is_closing():
            self.transport.close()

    def _watch_body(self) -> None:
        """Restart the body's clock at each read of it; stop it once the body is in."""
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self._phase is Phase.BODY and not self.transport.is_closing():
            self._body_timer = self.loop.call_later(self.timeout_keep_alive, self._body_timeout)

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self._phase is not Phase.BODY or self.transport.is_closing():
            return
        if self.flow.read_paused or self.cycle.waiting_for_100_continue:
            # The server is not reading (the application has not asked for more, or the
            # client waits to be told to go on): the stall is ours, not the client's.
            self._watch_body()
            return
        self.transport.close()

    def _stop_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
