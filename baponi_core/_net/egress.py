"""The egress proxy: how sandboxed code reaches the network when its profile's policy is
not ``none``.

The server listens on one unix socket per such sandbox (a *tap*), in the sandbox's slot;
inside, the sandbox's init relays 127.0.0.1:3128 to it (:mod:`baponi_core._sandbox.egress`).
The sandbox has no network interface but its own loopback: this socket is its only way
out. Each tap knows its sandbox's policy, so nothing the client says is trusted for it.

A tap speaks the two forms of HTTP proxying clients use: ``CONNECT host:port`` (a tunnel,
for HTTPS and anything else) and a plain-HTTP request with an absolute URL, forwarded
with ``Connection: close`` (one request per connection). For each, the host is judged by
the policy's rules first (:mod:`baponi_core._net.policy`), then resolved here, never in the
sandbox, and every address it resolves to is judged by the webhook address policy
(:mod:`baponi_core._net.addresses`) as the connection is made. A refusal is answered 403
with the reason in the body and in ``X-Baponi-Egress``, and counted: an execution that
failed after one is ``blocked``.

Bounds, per tap: connections at once, new connections per second, bytes both ways
altogether; per server: connections at once. Every wait has a deadline (the request head,
the upstream's connect, a connection idle both ways), and every buffer a size.

Written on asyncio's protocols (the server's event loop is asyncio's): what one end
receives is written to the other from the loop's own callback, with no task switch per
chunk, and the transports' flow control bounds what is buffered; they also end cleanly
when a tap closes mid-read, which anyio's unix-socket streams (4.x) do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpcore2

from baponi_core._net.addresses import RefusedTarget, allowed_addresses
from baponi_core._net.policy import NetworkPolicy

log = logging.getLogger(__name__)

GiB = 1 << 30
# Request headers that are the proxy's business, not the origin's.
HOP_HEADERS = frozenset({b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive"})
REFUSED_HEADER = "X-Baponi-Egress"
PRIVATE = "private address"


@dataclass(frozen=True)
class EgressLimits:
    connections: int = 64  # open at once, per sandbox
    rate: float = 20.0  # new connections per second, per sandbox, after a burst of:
    burst: int = 100
    total_bytes: int = 8 * GiB  # both ways, all connections of one sandbox together
    server_connections: int = 1024  # open at once, all sandboxes together
    head_bytes: int = 64 << 10  # a request head
    buffer_bytes: int = 256 << 10  # what each end of a connection buffers to send, at most
    head_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0  # resolving and connecting, each
    idle_timeout_s: float = 300.0  # nothing either way for this long: closed


class Refusal(Exception):
    """The connection is refused: answered with ``status`` and the reason."""

    def __init__(self, status: int, reason: str, *, policy: bool = False) -> None:
        super().__init__(reason)
        self.status, self.reason, self.policy = status, reason, policy


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    tunnel: bool  # CONNECT; else a plain-HTTP request to forward, ``head`` rewritten
    head: bytes = b""


PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    429: "Too Many Requests",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class Egress:
    """The server's egress proxy: a tap per sandbox whose policy lets it out."""

    def __init__(self, allow_private: bool = False, limits: EgressLimits | None = None) -> None:
        self.allow_private = allow_private  # for tests only: loopback and private upstreams
        self.limits = limits or EgressLimits()
        self.open = 0  # connections of all taps

    async def tap(self, path: Path, owner: int | None, policy: NetworkPolicy) -> Tap:
        """Listen at ``path`` (made here, 0600, owned by the sandbox's uid ``owner``) for
        one sandbox until :meth:`Tap.close`."""
        tap = Tap(self, policy, path)
        loop = asyncio.get_running_loop()
        tap.server = await loop.create_unix_server(lambda: Connection(tap).client, path)
        try:
            os.chmod(path, 0o600)
            if owner is not None:
                os.chown(path, owner, -1)
        except OSError:
            tap.close()
            raise
        return tap

    async def connect(self, host: str, port: int, side: Side) -> None:
        """Connect ``side`` to the first address of ``host`` that may be reached."""
        timeout = self.limits.connect_timeout_s
        try:
            addresses = await allowed_addresses(host, port, self.allow_private, timeout)
        except RefusedTarget:
            raise Refusal(403, PRIVATE, policy=True) from None
        except httpcore2.ConnectError:
            raise Refusal(502, f"cannot resolve {host}") from None
        loop = asyncio.get_running_loop()
        for address in addresses:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(timeout):
                    await loop.create_connection(lambda: side, address, port)
                    return
        raise Refusal(502, f"cannot connect to {host} port {port}")


class Tap:
    """One sandbox's listener. ``refused`` counts the connections its policy refused."""

    def __init__(self, egress: Egress, policy: NetworkPolicy, path: Path) -> None:
        self.egress, self.policy, self.path = egress, policy, path
        self.server: asyncio.Server | None = None
        self.refused = 0
        self.moved = 0  # bytes, both ways
        self.connections: set[Connection] = set()  # open now
        self._tokens = float(egress.limits.burst)
        self._filled = time.monotonic()
        self._closed = False

    @property
    def open(self) -> int:
        return len(self.connections)

    def close(self) -> None:
        """Stop listening and end every connection at once; the socket file goes."""
        self._closed = True
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            connection.abort()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def admit(self) -> None:
        """Refuses a connection over the bounds, before anything of it is read."""
        limits = self.egress.limits
        now = time.monotonic()
        self._tokens = min(limits.burst, self._tokens + (now - self._filled) * limits.rate)
        self._filled = now
        if self._closed:
            raise Refusal(503, "the sandbox is ending")
        if self.open >= limits.connections or self.egress.open >= limits.server_connections:
            raise Refusal(429, "too many connections at once")
        if self._tokens < 1:
            raise Refusal(429, "too many new connections per second")
        if self.moved >= limits.total_bytes:
            raise Refusal(429, "this sandbox has used all the bytes it may move")
        self._tokens -= 1

    def take(self, data: bytes) -> bytes:
        """What of ``data`` the sandbox may still move (all of it, or the part within
        its bytes); counted."""
        part = data[: max(0, self.egress.limits.total_bytes - self.moved)]
        self.moved += len(part)
        return part


class Side(asyncio.Protocol):
    """One end of a connection (the client's, or the upstream's): what it receives goes
    to the other end; when the other end's send buffer is full, it stops reading (so a
    connection buffers a bounded amount each way)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.transport: asyncio.Transport | None = None
        self.ended = False  # it said end of file

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are no subclass of asyncio.Transport, but alike).
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(self.connection.limits.buffer_bytes)
        self.connection.made(self)

    def data_received(self, data: bytes) -> None:
        self.connection.received(self, data)

    def eof_received(self) -> bool:
        return self.connection.eof(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.close()

    def pause_writing(self) -> None:
        self.connection.other(self).pause()

    def resume_writing(self) -> None:
        self.connection.other(self).resume()

    def pause(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class Connection:
    """One connection of a sandbox: its request head read (bounded, under a deadline),
    judged, the upstream connected, then both ways relayed until both have ended (each
    end passed on as a half-close), the sandbox's bytes run out, or it is idle."""

    def __init__(self, tap: Tap) -> None:
        self.tap, self.limits = tap, tap.egress.limits
        self.client, self.upstream = Side(self), Side(self)
        self.head = bytearray()
        self.relaying = False
        self.last = time.monotonic()  # bytes last moved
        self._opening: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def other(self, side: Side) -> Side:
        return self.upstream if side is self.client else self.client

    def made(self, side: Side) -> None:
        if side is not self.client:
            return
        try:
            self.tap.admit()
        except Refusal as refusal:
            self.refuse(refusal)
            return
        self.tap.connections.add(self)
        self.tap.egress.open += 1
        self._timer = asyncio.get_running_loop().call_later(
            self.limits.head_timeout_s, self._head_late
        )

    def received(self, side: Side, data: bytes) -> None:
        if self.relaying:
            self.last = time.monotonic()
            self._pass(self.other(side), data)
            return
        if side is not self.client or self._opening is not None or self._closed:
            return  # no more than the head is read before the upstream is there
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if (
            end < 0 and len(self.head) > self.limits.head_bytes
        ) or end + 4 > self.limits.head_bytes:
            self.refuse(Refusal(400, "no complete request head"))
            return
        if end < 0:
            return
        self.client.pause()
        head, rest = bytes(self.head[: end + 4]), bytes(self.head[end + 4 :])
        self.head.clear()
        self._opening = asyncio.ensure_future(self._open(head, rest))

    async def _open(self, head: bytes, rest: bytes) -> None:
        try:
            target = parse_head(head)
            reason = self.tap.policy.refusal(target.host, target.port)
            if reason is not None:
                raise Refusal(403, reason, policy=True)
            await self.tap.egress.connect(target.host, target.port, self.upstream)
        except Refusal as refusal:
            self.refuse(refusal)
            return
        if self._closed:
            return
        if target.tunnel:
            self.client.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            self.upstream.write(target.head)
        if not self._pass(self.upstream, rest):
            return
        self.relaying = True
        self.last = time.monotonic()
        self._watch_idle()
        self.client.resume()

    def _pass(self, to: Side, data: bytes) -> bool:
        """Write ``data`` to ``to`` as far as the sandbox's bytes go; past them, close.
        Whether the connection goes on."""
        part = self.tap.take(data)
        to.write(part)
        if len(part) < len(data):
            self.close()
            return False
        return True

    def eof(self, side: Side) -> bool:
        """Pass the end on; the connection closes once both have ended."""
        side.ended = True
        other = self.other(side)
        if not self.relaying or (other.ended and side.ended):
            self.close()
            return False
        if other.transport is not None and other.transport.can_write_eof():
            other.transport.write_eof()
        return True  # half-closed: the other way goes on

    def refuse(self, refusal: Refusal) -> None:
        if refusal.policy:
            self.tap.refused += 1
            log.info("egress refused (%s): %s", self.tap.path.parent.parent.name, refusal.reason)
        self.client.write(_refusal(refusal))
        self.close()

    def _head_late(self) -> None:
        if self._opening is None:
            self.refuse(Refusal(400, "no complete request head"))

    def _watch_idle(self) -> None:
        waited = time.monotonic() - self.last
        if waited >= self.limits.idle_timeout_s:
            self.close()
            return
        self._timer = asyncio.get_running_loop().call_later(
            self.limits.idle_timeout_s - waited, self._watch_idle
        )

    def close(self) -> None:
        """Close both ends once what was written to them is sent."""
        self._end()
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.close()

    def abort(self) -> None:
        """Close both ends now, whatever is unsent."""
        self._end()
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.abort()

    def _end(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._opening is not None:
            self._opening.cancel()
        if self in self.tap.connections:
            self.tap.connections.discard(self)
            self.tap.egress.open -= 1


def parse_head(head: bytes) -> Target:
    """The target of a request head (line and headers, ending in an empty line); raises
    Refusal 400 for anything else. A plain-HTTP request's head is rewritten for the
    origin: the path only, the proxy's headers gone, one request per connection."""
    lines = head.split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise Refusal(400, "not an HTTP request line") from None
    if not version.startswith("HTTP/1.") or not method.isalpha():
        raise Refusal(400, "not an HTTP/1 request")
    if method == "CONNECT":
        host, port = _host_port(urllib.parse.urlsplit(f"//{target}"), None)
        return Target(host, port, tunnel=True)
    url = urllib.parse.urlsplit(target)
    if url.scheme != "http":
        raise Refusal(400, "only http:// URLs are forwarded; use CONNECT for others")
    host, port = _host_port(url, 80)
    path = url.path or "/"
    line = f"{method} {path}{'?' + url.query if url.query else ''} {version}".encode()
    kept = [h for h in lines[1:] if h and h.split(b":", 1)[0].strip().lower() not in HOP_HEADERS]
    return Target(
        host, port, tunnel=False, head=b"\r\n".join([line, *kept, b"Connection: close", b"", b""])
    )


def _host_port(url: urllib.parse.SplitResult, default: int | None) -> tuple[str, int]:
    try:
        host, port = url.hostname, url.port or default
    except ValueError:
        raise Refusal(400, "not a valid port") from None
    if not host or port is None:
        raise Refusal(400, "the target needs a host and a port")
    return host, port


def _refusal(refusal: Refusal) -> bytes:
    body = f"baponi egress proxy: {refusal.reason}\n".encode()
    head = [
        f"HTTP/1.1 {refusal.status} {PHRASES[refusal.status]}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if refusal.policy:
        head.append(f"{REFUSED_HEADER}: refused: {refusal.reason}")
    return "\r\n".join([*head, "", ""]).encode() + body
