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

Written on the event loop's own socket calls: the head is read, judged and the upstream
connected here; from then on the connection's bytes are moved by
:mod:`baponi_core._net.relay` with ``splice(2)``, never copied through the interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpcore2

from baponi_core._net.addresses import RefusedTarget, allowed_addresses
from baponi_core._net.policy import NetworkPolicy
from baponi_core._net.relay import Budget, Relay

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
    buffer_bytes: int = 256 << 10  # what each way of a connection holds (its pipe), at most
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
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):  # a dead tap's socket (never followed)
                os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.setblocking(False)
            listener.bind(str(path))
            os.chmod(path, 0o600)
            if owner is not None:
                os.chown(path, owner, -1)
            listener.listen(128)
        except OSError:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        return Tap(self, policy, path, listener)

    async def connect(self, host: str, port: int) -> socket.socket:
        """A non-blocking socket connected to the first address of ``host`` that may be
        reached."""
        timeout = self.limits.connect_timeout_s
        try:
            addresses = await allowed_addresses(host, port, self.allow_private, timeout)
        except RefusedTarget:
            raise Refusal(403, PRIVATE, policy=True) from None
        except httpcore2.ConnectError:
            raise Refusal(502, f"cannot resolve {host}") from None
        loop = asyncio.get_running_loop()
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            try:
                upstream = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            except OSError:  # out of descriptors, for now
                continue
            try:
                upstream.setblocking(False)
                async with asyncio.timeout(timeout):
                    await loop.sock_connect(upstream, (address, port))
            except BaseException as exc:
                upstream.close()
                if isinstance(exc, OSError):  # refused, unreachable, or too slow
                    continue
                raise
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return upstream
        raise Refusal(502, f"cannot connect to {host} port {port}")


class Tap:
    """One sandbox's listener. ``refused`` counts the connections its policy refused."""

    def __init__(
        self, egress: Egress, policy: NetworkPolicy, path: Path, listener: socket.socket
    ) -> None:
        self.egress, self.policy, self.path = egress, policy, path
        self.refused = 0
        self.budget = Budget(egress.limits.total_bytes)  # both ways, all connections
        self.connections: set[Connection] = set()  # open now
        self._tokens = float(egress.limits.burst)
        self._filled = time.monotonic()
        self._closed = False
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(listener.fileno(), self._accept)

    @property
    def open(self) -> int:
        return len(self.connections)

    @property
    def moved(self) -> int:
        """Bytes moved, both ways."""
        return self.budget.moved

    def close(self) -> None:
        """Stop listening and end every connection at once; the socket file goes."""
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
        for connection in list(self.connections):
            connection.abort()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError:  # out of descriptors: try again in a while, not in a busy loop
                self._loop.remove_reader(self._listener.fileno())
                self._loop.call_later(1.0, self._resume_accepting)
                return
            client.setblocking(False)
            Connection(self, client).start()

    def _resume_accepting(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._listener.fileno(), self._accept)

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
        if self.budget.left == 0:
            raise Refusal(429, "this sandbox has used all the bytes it may move")
        self._tokens -= 1

    def take(self, data: bytes) -> bytes:
        """What of ``data`` the sandbox may still move (all of it, or the part within
        its bytes); counted."""
        part = data[: self.budget.left]
        self.budget.moved += len(part)
        return part


class Connection:
    """One connection of a sandbox: its request head read (bounded, under a deadline),
    judged, the upstream connected, then both ways relayed (:class:`Relay`) until both
    have ended (each end passed on as a half-close), the sandbox's bytes run out, or it
    is idle."""

    def __init__(self, tap: Tap, client: socket.socket) -> None:
        self.tap, self.limits, self.client = tap, tap.egress.limits, client
        self.relay: Relay | None = None
        self._opening: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self) -> None:
        try:
            self.tap.admit()
        except Refusal as refusal:
            self.refuse(refusal)
            return
        self.tap.connections.add(self)
        self.tap.egress.open += 1
        self._opening = asyncio.ensure_future(self._open())
        self._opening.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task[None]) -> None:
        # The client's socket is closed only once its task is over: a read cancelled
        # mid-way unregisters its descriptor later, and must not find the number reused.
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("egress connection failed", exc_info=error)
        if self.relay is None:
            self.client.close()
            self._end()

    async def _open(self) -> None:
        try:
            try:
                async with asyncio.timeout(self.limits.head_timeout_s):
                    read = await self._read_head()
            except TimeoutError:
                raise Refusal(400, "no complete request head") from None
            if read is None:
                self.close()  # gone before its head was complete
                return
            head, rest = read
            target = parse_head(head)
            reason = self.tap.policy.refusal(target.host, target.port)
            if reason is not None:
                raise Refusal(403, reason, policy=True)
            upstream = await self.tap.egress.connect(target.host, target.port)
        except Refusal as refusal:
            self.refuse(refusal)
            return
        passed = self.tap.take(rest)
        self.relay = Relay(
            self.client,
            upstream,
            self.tap.budget,
            buffer_bytes=self.limits.buffer_bytes,
            to_client=b"HTTP/1.1 200 Connection established\r\n\r\n" if target.tunnel else b"",
            to_upstream=target.head + passed,
            on_end=self._end,
        )
        self.relay.start()
        if len(passed) < len(rest):
            self.relay.close()  # over the sandbox's bytes already
        self._watch_idle()

    async def _read_head(self) -> tuple[bytes, bytes] | None:
        """The request head and what came after it (never more than the head's bound
        and a byte is read); None if the client ended first."""
        loop = asyncio.get_running_loop()
        data = bytearray()
        while True:
            try:
                chunk = await loop.sock_recv(self.client, self.limits.head_bytes + 1 - len(data))
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
            end = data.find(b"\r\n\r\n")
            if (end < 0 and len(data) > self.limits.head_bytes) or end + 4 > self.limits.head_bytes:
                raise Refusal(400, "no complete request head")
            if end >= 0:
                return bytes(data[: end + 4]), bytes(data[end + 4 :])

    def refuse(self, refusal: Refusal) -> None:
        if refusal.policy:
            self.tap.refused += 1
            log.info("egress refused (%s): %s", self.tap.path.parent.parent.name, refusal.reason)
        with contextlib.suppress(OSError):  # a few hundred bytes: a fresh socket takes them
            self.client.send(_refusal(refusal), socket.MSG_NOSIGNAL)
        self.close()

    def _watch_idle(self) -> None:
        if self.relay is None or self.relay.ended:
            return
        waited = time.monotonic() - self.relay.last
        if waited >= self.limits.idle_timeout_s:
            self.abort()
            return
        self._timer = asyncio.get_running_loop().call_later(
            self.limits.idle_timeout_s - waited, self._watch_idle
        )

    def close(self) -> None:
        """Close once what is held for either end is sent."""
        if self.relay is not None:
            self.relay.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Close both ends now, whatever is unsent."""
        if self.relay is not None:
            self.relay.abort()  # which ends the connection
        elif self._opening is not None and not self._opening.done():
            # Its end closes the client's socket (from within, it is ending already).
            if self._opening is not asyncio.current_task():
                self._opening.cancel()
        else:
            self.client.close()
            self._end()

    def _end(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
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
