"""A multipart/form-data body read part by part as it arrives (chunked or not), each
part's data handed on in chunks: a 1 GiB upload passes through without being held.
python-multipart's push parser does the parsing; this turns its callbacks into pulls."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from baponi_core._sandboxes.errors import InvalidFile

MAX_HEADERS = 8  # of one part
MAX_HEADER_BYTES = 8192


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None


class FormReader:
    """The parts of ``request``'s form, in order: :meth:`next_part`, then its data with
    :meth:`data` (or :meth:`read`) before the next."""

    def __init__(self, request: Request) -> None:
        kind, options = parse_options_header(request.headers.get("content-type", ""))
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InvalidFile("the body must be multipart/form-data with a boundary")
        self._body = request.stream().__aiter__()
        self._events: deque[tuple[str, bytes]] = deque()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": lambda: self._events.append(("begin", b"")),
                "on_header_field": lambda d, s, e: self._events.append(("field", d[s:e])),
                "on_header_value": lambda d, s, e: self._events.append(("value", d[s:e])),
                "on_header_end": lambda: self._events.append(("header", b"")),
                "on_headers_finished": lambda: self._events.append(("headers", b"")),
                "on_part_data": lambda d, s, e: self._events.append(("data", d[s:e])),
                "on_part_end": lambda: self._events.append(("end", b"")),
                "on_end": lambda: self._events.append(("done", b"")),
            },
            max_header_count=MAX_HEADERS,
            max_header_size=MAX_HEADER_BYTES,
        )
        self._in_part = False

    async def _next(self) -> tuple[str, bytes]:
        while not self._events:
            try:
                chunk = await self._body.__anext__()
            except StopAsyncIteration:
                raise InvalidFile("the form ends before its closing boundary") from None
            try:
                self._parser.write(chunk)
            except MultipartParseError as exc:
                raise InvalidFile(f"the form is not valid multipart: {exc}") from None
        return self._events.popleft()

    async def next_part(self) -> Part | None:
        """The next part's name and file name once its headers are in; None at the end."""
        while self._in_part:  # the rest of a part not read
            async for _ in self.data():
                pass
        headers: dict[bytes, bytes] = {}
        field = value = b""
        while True:
            kind, data = await self._next()
            if kind == "done":
                return None
            if kind == "field":
                field += data
            elif kind == "value":
                value += data
            elif kind == "header":
                headers[field.lower()], field, value = value, b"", b""
            elif kind == "headers":
                break
        self._in_part = True
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode(errors="replace")
        filename = options.get(b"filename")
        return Part(name, filename.decode(errors="replace") if filename is not None else None)

    async def data(self) -> AsyncIterator[bytes]:
        """The current part's data, chunk by chunk, to its end."""
        while self._in_part:
            kind, data = await self._next()
            if kind == "data" and data:
                yield data
            elif kind == "end":
                self._in_part = False

    async def read(self, limit: int) -> bytes:
        """The current part's data whole, at most ``limit`` bytes of it."""
        got = bytearray()
        async for chunk in self.data():
            got += chunk
            if len(got) > limit:
                raise InvalidFile(f"a form field is larger than {limit} bytes")
        return bytes(got)
