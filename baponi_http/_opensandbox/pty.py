"""execd's PTY sessions: ``POST /pty``, ``GET``/``DELETE /pty/{id}`` and the WebSocket
``/pty/{id}/ws?pty=0|1&since=N&takeover=1`` (OpenSandbox's ``PTY.md``).

On the socket: a JSON ``connected`` frame first, then a ``0x03`` replay frame (8-byte
big-endian offset, then the bytes kept from ``since`` on) if there is any, then binary
output frames (``0x01`` stdout, ``0x02`` stderr in pipe mode) as it comes, and a JSON
``exit`` frame when the shell ends. The client sends ``0x00`` + stdin, or JSON frames
(``resize``, ``signal``, ``ping``, ``stdin``). A client that falls behind the kept
output gets what is left as a replay frame, whose offset says how much it missed.
Thin: the core's :class:`~baponi_core._sandboxes.terminals.Terminals` does the work.
"""

from __future__ import annotations

import contextlib
import json
import signal
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pydantic
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from baponi_core._errors import BaponiError, ValidationError
from baponi_core._models import decimal, parse
from baponi_core._sandboxes.commands import SIGNALLED
from baponi_core._sandboxes.ptywire import (
    ClientFrame,
    CreatePtyRequest,
    CreatePtyResponse,
    PtyStatus,
)
from baponi_core._sandboxes.terminals import AlreadyConnected, Chunk, Holder, Terminal, Terminals
from baponi_http._opensandbox.errors import refusal
from baponi_http._opensandbox.execd import CLOSE_REFUSED, deny, live_of
from baponi_http._opensandbox.sockets import first_to_end
from baponi_http._requests import core_of, json_body

STDIN, REPLAY = 0x00, 0x03
OFFSET = struct.Struct(">Q")
CLOSE_TAKEN_OVER = 4001


def terminals_of(connection: HTTPConnection) -> Terminals:
    return core_of(connection).sandboxes.terminals(live_of(connection))


async def create(request: Request) -> Response:
    asked = parse(CreatePtyRequest, await json_body(request, optional=True))
    live_of(request).check_usable()
    terminal = terminals_of(request).create(asked.cwd, asked.command)
    return JSONResponse(CreatePtyResponse(session_id=terminal.id).model_dump(), status_code=201)


async def status(request: Request) -> Response:
    terminal = terminals_of(request).get(request.path_params["session_id"])
    body = PtyStatus(
        session_id=terminal.id, running=terminal.running, output_offset=terminal.output.end
    )
    return JSONResponse(body.model_dump())


async def delete(request: Request) -> Response:
    await terminals_of(request).delete(request.path_params["session_id"])
    return Response(status_code=200)


async def attach(websocket: WebSocket) -> None:
    query = websocket.query_params
    takeover = query.get("takeover") == "1"
    try:
        terminals = terminals_of(websocket)
        terminal = terminals.get(websocket.path_params["session_id"])
        since = _offset(query.get("since", "0"))
        if not takeover and not await terminal.free():
            raise AlreadyConnected(f"another client is attached to pty session {terminal.id}")
    except BaponiError as exc:
        await deny(websocket, refusal(exc), CLOSE_REFUSED + exc.status)
        return
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect):  # the client went; the session goes on
        await _serve(Link(websocket), terminals, terminal, since, takeover)


async def _serve(
    link: Link, terminals: Terminals, terminal: Terminal, since: int, takeover: bool
) -> None:
    try:
        holder = await terminal.claim(takeover)
    except AlreadyConnected as exc:
        await link.error(exc.code, exc.message)
        await link.close(1008, exc.code)
        return
    try:
        try:
            await terminals.start(terminal, pty=link.websocket.query_params.get("pty") != "0")
        except BaponiError as exc:
            await link.error("START_FAILED", exc.message)
            await link.close(1011, "START_FAILED")
            return
        await Attachment(link, terminal, holder).run(since)
    finally:
        terminal.release(holder)


def _offset(text: str) -> int:
    offset = decimal(text)
    if offset is None:
        raise ValidationError("since must be a byte offset")
    return offset


class Link:
    """The socket, written by one task at a time, and by none once closed."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.lock = anyio.Lock()
        self.closed = False

    async def json(self, **frame: Any) -> None:
        await self._send(self.websocket.send_text, json.dumps(frame))

    async def bytes(self, data: bytes) -> None:
        await self._send(self.websocket.send_bytes, data)

    async def error(self, code: str, message: str) -> None:
        await self.json(type="error", code=code, error=message)

    async def close(self, code: int, reason: str) -> None:
        async with self.lock:
            if not self.closed:
                self.closed = True
                await self.websocket.close(code, reason)

    async def _send(self, send: Callable[[Any], Awaitable[None]], data: Any) -> None:
        async with self.lock:
            if not self.closed:
                await send(data)


class Attachment:
    """One client on a session, from its ``connected`` frame to the end of either."""

    def __init__(self, link: Link, terminal: Terminal, holder: Holder) -> None:
        self.link, self.terminal, self.holder = link, terminal, holder

    async def run(self, since: int) -> None:
        mode = "pty" if self.terminal.pty else "pipe"
        await self.link.json(type="connected", session_id=self.terminal.id, mode=mode)
        sent = await self._replay(since)
        await first_to_end(lambda: self._output(sent), self._evicted, self._input)

    async def _replay(self, since: int) -> int:
        """What was kept from ``since`` on, as one replay frame; where live output starts."""
        output = self.terminal.output
        chunks = output.since(since)
        if chunks:
            await self._send_replay(chunks)
            return chunks[-1].end
        return output.end

    async def _send_replay(self, chunks: list[Chunk]) -> None:
        data = b"".join(chunk.data for chunk in chunks)
        await self.link.bytes(bytes([REPLAY]) + OFFSET.pack(chunks[0].offset) + data)

    async def _output(self, sent: int) -> None:
        output = self.terminal.output
        while True:
            changed = output.changed
            chunks = output.since(sent)
            for chunk in chunks:
                if chunk.offset > sent:  # fell behind what is kept: say from where
                    await self._send_replay([chunk])
                else:
                    await self.link.bytes(bytes([chunk.channel]) + chunk.data)
                sent = chunk.end
            if chunks:
                continue
            if self.terminal.ended.is_set():
                code = self.terminal.exit_code
                await self.link.json(type="exit", exit_code=SIGNALLED if code is None else code)
                await self.link.close(1000, "process exited")
                return
            await changed.wait()

    async def _evicted(self) -> None:
        await self.holder.evicted.wait()
        await self.link.close(CLOSE_TAKEN_OVER, "TAKEN_OVER")

    async def _input(self) -> None:
        while True:
            message = await self.link.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            live_of(self.link.websocket).touch()  # a request, for its idle lifetime
            data = message.get("bytes")
            if data is not None:
                if data[:1] == bytes([STDIN]):
                    await self.terminal.write(data[1:])
            else:
                await self._control(message.get("text") or "")

    async def _control(self, text: str) -> None:
        try:
            frame = ClientFrame.model_validate_json(text)
        except pydantic.ValidationError:
            await self.link.error("INVALID_FRAME", "not a resize, signal, ping or stdin frame")
            return
        if frame.type == "ping":
            await self.link.json(type="pong")
        elif frame.type == "stdin":
            await self.terminal.write(frame.data.encode())
        elif frame.type == "resize":
            if frame.cols and frame.rows:
                await self.terminal.resize(frame.cols, frame.rows)
        elif (signo := _signal_number(frame.signal)) is not None:
            await self.terminal.signal(signo)
        else:
            await self.link.error("INVALID_FRAME", f"no signal named {frame.signal!r}")


def _signal_number(name: str) -> int | None:
    name = name.upper()
    try:
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"].value
    except KeyError:
        return None


ROUTES = [
    Route("/pty", create, methods=["POST"]),
    Route("/pty/{session_id}", status, methods=["GET"]),
    Route("/pty/{session_id}", delete, methods=["DELETE"]),
    WebSocketRoute("/pty/{session_id}/ws", attach),
]
