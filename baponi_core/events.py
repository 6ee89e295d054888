"""The events of an execution's stream, one JSON object per NDJSON line.

Each event is numbered by the execution's journal as it is appended (``seq`` from 1,
written last, as the reference API does); the same events, with the same numbers, reach
the first stream, every reconnect and the store.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

from baponi_core.models import SandboxResult
from baponi_core.records import ExecutionStatus
from baponi_core.sandbox.spec import Stream


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
