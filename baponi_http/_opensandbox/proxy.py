"""execd's ``/proxy/{port}/{path...}``: an HTTP request to ``127.0.0.1:{port}`` inside
the sandbox, through a :class:`~baponi_core._sandboxes.relay.Relay` (a process inside,
never a connection from the server into the sandbox).

The request goes as it came (method, path and query unchanged, its headers but the
hop-by-hop ones, the execd token and forwarding headers the client made up; ours say who
asked), its body streamed, and ``Connection: close``: one exchange per relay. The answer
is parsed by h11, a real HTTP/1.1 parser, with its head bounded, and its body streamed
back as it comes (server-sent events pass). Nothing listening is a 502.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import h11
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from baponi_core._errors import ValidationError
from baponi_core._ids import KEY_PREFIX
from baponi_core._sandboxes.relay import BadGateway, Relay, port_of
from baponi_http._opensandbox.execd import live_of

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
NOT_FORWARDED = HOP_BY_HOP | {
    "x-execd-access-token",  # the sandbox's key to its own execd: never to its services
    "open-sandbox-api-key",  # an organisation's API key (the SDK's server-proxy mode)
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
}
OUR_KEY = KEY_PREFIX.encode()  # an Authorization with one is this server's, not the service's
MAX_HEAD = 64 << 10  # of the response's status line and headers
HEAD_TIMEOUT_S = 300.0  # for the service to start answering
PREFIX = b"/proxy"
Headers = list[tuple[bytes, bytes]]


async def proxy(request: Request) -> Response:
    port, target = target_of(request)
    relay = await Relay.open(live_of(request), port)
    head: h11.Response | None = None
    try:
        upstream = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        await _send_request(request, target, relay, upstream)
        with anyio.move_on_after(HEAD_TIMEOUT_S):
            head = await _response_head(relay, upstream)
        if head is None:
            raise BadGateway(f"port {port} inside the sandbox did not answer in time")
    except BaseException:
        with anyio.CancelScope(shield=True):
            await relay.close()
        raise
    response = StreamingResponse(_body(relay, upstream), status_code=head.status_code)
    response.raw_headers = without(list(head.headers), HOP_BY_HOP)
    return response


def target_of(connection: HTTPConnection) -> tuple[int, bytes]:
    """The port and the request target (path and query, as the client encoded them)
    after ``/proxy``."""
    raw = connection.scope.get("raw_path") or connection.scope["path"].encode()
    mounted = connection.scope.get("root_path", "").encode()
    rest: bytes = raw[len(mounted) :] if raw.startswith(mounted) else raw
    port, _, path = rest.removeprefix(PREFIX).removeprefix(b"/").partition(b"/")
    query = connection.scope.get("query_string", b"")
    return port_of(port.decode("latin-1")), b"/" + path + (b"?" + query if query else b"")


def forwarded(connection: HTTPConnection, dropped: frozenset[str]) -> Headers:
    """The client's headers but the ``dropped`` ones and one of our API keys, then ours
    saying who asked."""
    headers = [
        (name, value)
        for name, value in without(connection.scope["headers"], dropped)
        if not (name == b"authorization" and OUR_KEY in value)
    ]
    client = connection.client.host if connection.client else "unknown"
    headers += [
        (b"x-forwarded-for", client.encode()),
        (b"x-forwarded-proto", connection.url.scheme.encode()),
    ]
    if host := connection.headers.get("host"):
        headers.append((b"x-forwarded-host", host.encode("latin-1")))
    return headers


async def _send_request(
    request: Request, target: bytes, relay: Relay, upstream: h11.Connection
) -> None:
    headers = [*forwarded(request, NOT_FORWARDED), (b"connection", b"close")]
    if "transfer-encoding" in request.headers:
        headers.append((b"transfer-encoding", b"chunked"))  # h11 frames it again
    try:
        await relay.send(
            upstream.send(h11.Request(method=request.method, target=target, headers=headers))
        )
        async for chunk in request.stream():
            if chunk:
                await relay.send(upstream.send(h11.Data(data=chunk)))
        await relay.send(upstream.send(h11.EndOfMessage()))
    except h11.LocalProtocolError as exc:
        raise ValidationError(f"the request cannot be forwarded: {exc}") from None


async def _next_event(relay: Relay, upstream: h11.Connection) -> h11.Event:
    """The next event of the answer; a relay that ends before one is a 502."""
    while True:
        try:
            event = upstream.next_event()
        except h11.RemoteProtocolError:
            raise relay.unreachable() from None
        if isinstance(event, h11.Event):
            return event
        if event is h11.PAUSED:  # more than one answer: not what was asked
            raise relay.unreachable()
        upstream.receive_data(await relay.receive())


async def _response_head(relay: Relay, upstream: h11.Connection) -> h11.Response:
    while True:
        event = await _next_event(relay, upstream)
        if isinstance(event, h11.Response):
            return event
        if not isinstance(event, h11.InformationalResponse):  # a 100 Continue: the next
            raise relay.unreachable()


async def _body(relay: Relay, upstream: h11.Connection) -> AsyncIterator[bytes]:
    try:
        while True:
            event = await _next_event(relay, upstream)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:  # cut off mid-body: the client's connection is closed short
                raise relay.unreachable()
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await relay.close()


def without(headers: Headers, dropped: frozenset[str]) -> Headers:
    """``headers`` but the ``dropped`` ones and those their ``Connection`` names."""
    named = {
        option.strip().lower().decode("latin-1")
        for name, value in headers
        if name.lower() == b"connection"
        for option in value.split(b",")
    }
    return [
        (name, value)
        for name, value in headers
        if (key := name.lower().decode("latin-1")) not in dropped and key not in named
    ]


METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
ROUTES = [Route("/proxy{rest:path}", proxy, methods=METHODS)]
