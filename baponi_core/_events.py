"""The events of an execution's stream, one JSON object per NDJSON line.

Each event is numbered by the execution's journal as it is appended (``seq`` from 1,
written last, as the reference API does); the same events, with the same numbers, reach
the first stream, every reconnect and the store.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from baponi_core._models import SandboxResult
from baponi_core._records import ExecutionStatus
from baponi_core._sandbox.spec import Stream


class StatusEvent(BaseModel):
    type: Literal["status"] = "status"
    trace_id: str
    status: ExecutionStatus
    seq: int = 0


class OutputEvent(BaseModel):
    type: Literal["output"] = "output"
    stream: Stream
    data: str
    seq: int = 0


class KeepaliveEvent(BaseModel):
    type: Literal["keepalive"] = "keepalive"
    seq: int = 0


class ResultEvent(BaseModel):
    type: Literal["result"] = "result"
    trace_id: str
    status: ExecutionStatus
    result: SandboxResult
    output_truncated: bool
    seq: int = 0


Event = Annotated[
    StatusEvent | OutputEvent | KeepaliveEvent | ResultEvent, Field(discriminator="type")
]
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def encode(event: Event) -> str:
    """The event as one NDJSON line (without its newline), compact."""
    return json.dumps(event.model_dump(mode="json"), separators=(",", ":"))


def decode(line: str) -> Event:
    """An event as :func:`encode` wrote it (read back from the store)."""
    return _EVENT.validate_json(line)


PIECE_CHARS = 16 << 10  # of output text per piece: at most 6 times that once escaped
_HOLE = "\x00hole\x00"  # stands in for output text; NUL never is in the other fields
_HOLE_JSON = json.dumps(_HOLE)
OutputReader = Callable[[Stream, int], Awaitable[str]]


def size(event: Event) -> int:
    """About how many bytes the event holds in memory (its output text, mostly)."""
    if isinstance(event, OutputEvent):
        return len(event.data) + 64
    if isinstance(event, ResultEvent):
        return len(event.result.stdout) + len(event.result.stderr) + 256
    return 64


def pieces(event: Event) -> Iterator[str]:
    """The event's NDJSON line (:func:`encode` and its newline) in pieces of bounded size,
    made as they are sent: a result of megabytes of output is never one string."""
    frame, texts = _frame(event)
    for part, text in zip(frame, texts, strict=False):
        yield part + '"'
        for start in range(0, len(text), PIECE_CHARS):
            yield json.dumps(text[start : start + PIECE_CHARS])[1:-1]
        yield '"'
    yield frame[-1] + "\n"


async def stored_result_pieces(event: ResultEvent, read: OutputReader) -> AsyncIterator[str]:
    """:func:`pieces` of a result stored without its output (``read`` gives the recorded
    output of a stream a piece at a time from an offset, "" at its end)."""
    frame, _ = _frame(event)
    streams: tuple[Stream, Stream] = ("stdout", "stderr")
    for part, stream in zip(frame, streams, strict=False):
        yield part + '"'
        offset = 0
        while text := await read(stream, offset):
            offset += len(text)
            yield json.dumps(text)[1:-1]
        yield '"'
    yield frame[-1] + "\n"


def _frame(event: Event) -> tuple[list[str], list[str]]:
    """The event's line split around its output texts (data; or stdout and stderr), and
    those texts."""
    texts: list[str] = []
    fields = event.model_dump(mode="json")

    def hollow(holder: dict[str, Any], key: str) -> None:
        texts.append(holder[key])
        holder[key] = _HOLE

    if isinstance(event, OutputEvent):
        hollow(fields, "data")
    elif isinstance(event, ResultEvent):
        hollow(fields["result"], "stdout")
        hollow(fields["result"], "stderr")
    return json.dumps(fields, separators=(",", ":")).split(_HOLE_JSON), texts
