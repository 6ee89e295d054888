"""execd's ``/proxy/{port}/...`` for a WebSocket: the client's socket accepted here, and
a WebSocket client of our own to ``127.0.0.1:{port}`` inside the sandbox, spoken over a
:class:`~baponi_core._sandboxes.relay.Relay` with the ``websockets`` library's sans-I/O
protocol (which parses the sandbox's handshake and frames as hostile, its messages
bounded), and messages copied between the two as they come.

The upstream handshake comes first: a service that refuses it, or nothing listening,
refuses the client before its own handshake (502, as HTTP's denial). A close on
either side closes the other with its code.
"""

from __future__ import annotations

import anyio
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.client import ClientProtocol
from websockets.datastructures import Headers as WsHeaders
from websockets.frames import Frame, Opcode
from websockets.http11 import Response as WsResponse
from websockets.protocol import Event
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from baponi_core._errors import BaponiError
from baponi_core._sandboxes.relay import BadGateway, Relay
from baponi_http._opensandbox.errors import refusal
from baponi_http._opensandbox.execd import CLOSE_REFUSED, deny, live_of
from baponi_http._opensandbox.proxy import NOT_FORWARDED, forwarded, target_of
from baponi_http._opensandbox.sockets import first_to_end

MAX_MESSAGE = 16 << 20  # from the sandbox's service, as uvicorn bounds the client's
# The handshake is the protocol's own to make: the client's versions of these go.
HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)
UNSENDABLE_CLOSES = frozenset({1005, 1006, 1015})  # reported, never sent in a frame
HANDSHAKE_TIMEOUT_S = 30.0


async def proxy_ws(websocket: WebSocket) -> None:
    try:
        port, target = target_of(websocket)
        relay = await Relay.open(live_of(websocket), port)
    except BaponiError as exc:
        await deny(websocket, refusal(exc), CLOSE_REFUSED + exc.status)
        return
    try:
        upstream = Upstream(relay, websocket, target)
        try:
            with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
                await upstream.handshake()
        except (BaponiError, TimeoutError) as exc:
            failure = exc if isinstance(exc, BaponiError) else relay.unreachable()
            await deny(websocket, refusal(failure), CLOSE_REFUSED + failure.status)
            return
        await websocket.accept(subprotocol=upstream.protocol.subprotocol)
        await first_to_end(upstream.to_client, upstream.from_client)
    finally:
        with anyio.CancelScope(shield=True):
            await relay.close()


class Upstream:
    """The sandbox's side: a WebSocket client over the relay."""

    def __init__(self, relay: Relay, websocket: WebSocket, target: bytes) -> None:
        self.relay, self.websocket = relay, websocket
        offered = websocket.headers.get("sec-websocket-protocol")
        subprotocols = [Subprotocol(p.strip()) for p in offered.split(",")] if offered else None
        self.protocol = ClientProtocol(
            parse_uri(f"ws://127.0.0.1:{relay.port}/"),
            subprotocols=subprotocols,
            max_size=MAX_MESSAGE,
        )
        self.target = target.decode("latin-1")
        self.sending = anyio.Lock()  # one writer of the relay at a time: whole frames
        self.pending: list[Event] = []  # events received, not yet handled
        self.parts: list[bytes] = []  # of the message coming, and whether it is text
        self.text = False

    async def handshake(self) -> None:
        request = self.protocol.connect()
        request.path = self.target
        theirs = forwarded(self.websocket, NOT_FORWARDED | HANDSHAKE)
        headers = WsHeaders()
        for name, value in request.headers.raw_items():
            if name.lower() != "host" or not self.websocket.headers.get("host"):
                headers[name] = value  # the client's Host goes instead, as for HTTP
        for raw_name, raw_value in theirs:
            headers[raw_name.decode("latin-1")] = raw_value.decode("latin-1")
        request.headers = headers
        self.protocol.send_request(request)
        await self.flush()
        while True:
            data = await self._receive()
            self.pending += self.protocol.events_received()
            if any(isinstance(event, WsResponse) for event in self.pending):
                break
            if not data:
                raise self.relay.unreachable()
        if self.protocol.handshake_exc is not None:
            raise BadGateway(f"the service on port {self.relay.port} refused the WebSocket")

    async def flush(self) -> None:
        async with self.sending:
            for data in self.protocol.data_to_send():
                if data:  # b"": the protocol would half-close; the relay cannot
                    await self.relay.send(data)

    async def _receive(self) -> bytes:
        data = await self.relay.receive()
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        return data

    async def to_client(self) -> None:
        events, ended = self.pending, False  # first what came with the handshake's answer
        while True:
            for event in events:
                if isinstance(event, Frame) and not await self._forward(event):
                    return
            if ended:
                await self.websocket.close(1011, "the service went away")
                return
            ended = not await self._receive()
            await self.flush()  # pongs, and the echo of a close
            events = self.protocol.events_received()

    async def _forward(self, frame: Frame) -> bool:
        """Pass a frame's message on once it is whole; False at a close."""
        if frame.opcode is Opcode.CLOSE:
            await self._close_client()
            return False
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self.parts, self.text = [bytes(frame.data)], frame.opcode is Opcode.TEXT
        elif frame.opcode is Opcode.CONT:
            self.parts.append(bytes(frame.data))
        else:
            return True  # a ping (answered by the protocol) or a pong
        if frame.fin:
            message, self.parts = b"".join(self.parts), []
            if self.text:
                try:
                    await self.websocket.send_text(message.decode())
                except UnicodeDecodeError:
                    await self.websocket.close(1007, "the service sent text that is not UTF-8")
                    return False
            else:
                await self.websocket.send_bytes(message)
        return True

    async def _close_client(self) -> None:
        closed = self.protocol.close_rcvd
        code = 1000 if closed is None or closed.code in UNSENDABLE_CLOSES else closed.code
        await self.websocket.close(code, closed.reason if closed else "")

    async def from_client(self) -> None:
        while True:
            message = await self.websocket.receive()
            live_of(self.websocket).touch()  # each message a request, for its idle lifetime
            if message["type"] == "websocket.disconnect":
                code = message.get("code", 1000)
                self.protocol.send_close(1000 if code in UNSENDABLE_CLOSES else code)
                await self.flush()
                return
            if (text := message.get("text")) is not None:
                self.protocol.send_text(text.encode())
            elif (data := message.get("bytes")) is not None:
                self.protocol.send_binary(data)
            await self.flush()


ROUTES = [WebSocketRoute("/proxy{rest:path}", proxy_ws)]
