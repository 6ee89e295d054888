"""The egress proxy: how sandboxed code reaches the network when its profile's policy is
not ``none``.

The server listens on one unix socket per such sandbox (a *tap*), in the sandbox's slot;
inside, the sandbox's init relays 127.0.0.1:3128 to it (:mod:`baponi_core.sandbox.egress`).
The sandbox has no network interface but its own loopback: this socket is its only way
out. Each tap knows its sandbox's policy, so nothing the client says is trusted for it.

A tap speaks the two forms of HTTP proxying clients use: ``CONNECT host:port`` (a tunnel,
for HTTPS and anything else) and a plain-HTTP request with an absolute URL, forwarded
with ``Connection: close`` (one request per connection). For each, the host is judged by
the policy's rules first (:mod:`baponi_core.net.policy`), then resolved here, never in the
sandbox, and every address it resolves to is judged by the webhook address policy
(:mod:`baponi_core.net.addresses`) as the connection is made. A refusal is answered 403
with the reason in the body and in ``X-Baponi-Egress``, and counted: an execution that
failed after one is ``blocked``.

Bounds, per tap: connections at once, new connections per second, bytes both ways
altogether; per server: connections at once. Every wait has a deadline (the request head,
the upstream's connect, a connection idle both ways), and every buffer a size.

Written on asyncio's streams (the server's event loop is asyncio's): their transports
end cleanly when a tap closes mid-read, which anyio's unix-socket streams (4.x) do not:
a read cancelled as data arrives makes the loop report an InvalidStateError.
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

import httpcore2

from baponi_core.net.addresses import RefusedTarget, allowed_addresses
from baponi_core.net.policy import NetworkPolicy

log = logging.getLogger(__name__)

GiB = 1 << 30
# Request headers that are the proxy's business, not the origin's.
HOP_HEADERS = frozenset({b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive"})
REFUSED_HEADER = "X-Baponi-Egress"
PRIVATE = "private address"
CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class EgressLimits:
    connections: int = 64  # open at once, per sandbox
    rate: float = 20.0  # new connections per second, per sandbox, after a burst of:
    burst: int = 100
    total_bytes: int = 8 * GiB  # both ways, all connections of one sandbox together
    server_connections: int = 2048  # open at once, all sandboxes together
    head_bytes: int = 64 << 10  # a request head; also what a connection buffers each way
    head_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0  # resolving and connecting, each
    idle_timeout_s: float = 300.0  # nothing either way for this long: closed


class Refusal(Exception):
    """The connection is refused: answered with ``status`` and the reason."""

    def __init__(self, status: int, reason: str, *, policy: bool = False) -> None:
        super().__init__(reason)
        self.status, self.reason, self.policy = status, reason, policy


class Exhausted(Exception):
    """The sandbox has used all the bytes it may move."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    tunnel: bool  # CONNECT; else a plain-HTTP request to forward, ``head`` rewritten
    head: bytes = b""


@dataclass(eq=False)
class Peer:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def abort(self) -> None:
        self.writer.transport.abort()

    async def finish(self) -> None:
        """Close once what was written is sent (or a few seconds have gone)."""
        self.writer.close()
        with contextlib.suppress(*BROKEN, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.writer.wait_closed()
        self.abort()


PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    429: "Too Many Requests",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
BROKEN = (ConnectionError, OSError, Exhausted, asyncio.IncompleteReadError)


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
        server = await asyncio.start_unix_server(tap.serve_one, path, limit=self.limits.head_bytes)
        tap.server = server
        try:
            os.chmod(path, 0o600)
            if owner is not None:
                os.chown(path, owner, -1)
        except OSError:
            tap.close()
            raise
        return tap

    async def connect(self, host: str, port: int) -> Peer:
        """A connection to the first address of ``host`` that may be reached."""
        timeout = self.limits.connect_timeout_s
        try:
            addresses = await allowed_addresses(host, port, self.allow_private, timeout)
        except RefusedTarget:
            raise Refusal(403, PRIVATE, policy=True) from None
        except httpcore2.ConnectError:
            raise Refusal(502, f"cannot resolve {host}") from None
        for address in addresses:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(timeout):
                    reader, writer = await asyncio.open_connection(
                        address, port, limit=self.limits.head_bytes
                    )
                    return Peer(reader, writer)
        raise Refusal(502, f"cannot connect to {host} port {port}")


class Tap:
    """One sandbox's listener. ``refused`` counts the connections its policy refused."""

    def __init__(self, egress: Egress, policy: NetworkPolicy, path: Path) -> None:
        self.egress, self.policy, self.path = egress, policy, path
        self.server: asyncio.Server | None = None
        self.refused = 0
        self.moved = 0  # bytes, both ways
        self.open = 0  # connections now
        self._peers: set[Peer] = set()  # of the connections open, both ends
        self._tokens = float(egress.limits.burst)
        self._filled = time.monotonic()
        self._closed = False

    def close(self) -> None:
        """Stop listening and end every connection at once; the socket file goes."""
        self._closed = True
        if self.server is not None:
            self.server.close()
        for peer in list(self._peers):
            peer.abort()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = Peer(reader, writer)
        try:
            self._admit()
        except Refusal as refusal:
            await _answer(client, refusal)
            return
        self._peers.add(client)
        self.open += 1
        self.egress.open += 1
        try:
            await self._proxy(client)
        except BROKEN:
            pass
        finally:
            self.open -= 1
            self.egress.open -= 1
            self._peers.discard(client)
            await client.finish()

    def _admit(self) -> None:
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

    async def _proxy(self, client: Peer) -> None:
        limits = self.egress.limits
        try:
            try:
                async with asyncio.timeout(limits.head_timeout_s):
                    head = await client.reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
                raise Refusal(400, "no complete request head") from None
            target = parse_head(head)
            reason = self.policy.refusal(target.host, target.port)
            if reason is not None:
                raise Refusal(403, reason, policy=True)
            upstream = await self.egress.connect(target.host, target.port)
        except Refusal as refusal:
            if refusal.policy:
                self.refused += 1
                log.info("egress refused (%s): %s", self.path.parent.parent.name, refusal.reason)
            await _answer(client, refusal)
            return
        self._peers.add(upstream)
        try:
            if target.tunnel:
                client.writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.writer.write(target.head)
            await self._relay(client, upstream)
        finally:
            self._peers.discard(upstream)
            await upstream.finish()

    async def _relay(self, client: Peer, upstream: Peer) -> None:
        """Copy both ways until both have ended (half-closes passed on), the sandbox's
        bytes run out, or neither way moves for the idle timeout."""
        limits = self.egress.limits
        last = time.monotonic()

        async def copy(source: Peer, sink: Peer) -> None:
            nonlocal last
            while data := await source.reader.read(limits.head_bytes):
                last = time.monotonic()
                sink.writer.write(self._count(data))
                await sink.writer.drain()
            if sink.writer.can_write_eof():
                sink.writer.write_eof()

        async def idle() -> None:
            while True:
                waited = time.monotonic() - last
                if waited >= limits.idle_timeout_s:
                    return
                await asyncio.sleep(max(0.05, limits.idle_timeout_s - waited))

        ways = [
            asyncio.ensure_future(copy(client, upstream)),
            asyncio.ensure_future(copy(upstream, client)),
        ]
        watch = asyncio.ensure_future(idle())
        try:
            pending = set(ways)
            while pending:
                done, pending = await asyncio.wait(
                    [*pending, watch], return_when=asyncio.FIRST_COMPLETED
                )
                if watch in done:
                    return
                pending.discard(watch)
                for way in done:
                    if way.exception() is not None:  # broken: the other way goes too
                        return
        finally:
            for task in (*ways, watch):
                task.cancel()
            await asyncio.gather(*ways, watch, return_exceptions=True)

    def _count(self, data: bytes) -> bytes:
        self.moved += len(data)
        if self.moved > self.egress.limits.total_bytes:
            raise Exhausted
        return data


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


async def _answer(client: Peer, refusal: Refusal) -> None:
    """Say why, and close; a client that does not read it cannot hold the connection."""
    with contextlib.suppress(*BROKEN):
        client.writer.write(_refusal(refusal))
    await client.finish()


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
