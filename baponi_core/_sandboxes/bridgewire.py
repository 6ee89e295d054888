"""What the kernel bridge (:mod:`bridge`, inside the sandbox) says, one JSON object a
line. Sandboxed code can replace the bridge, so each line is parsed here as hostile:
a line that is not one of these is the end of its context."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic import ValidationError as PydanticError

MAX_NAME = 1024  # an exception's name, a kernel state
MAX_MIME_TYPES = 64


class Line(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)  # no "3" for 3


class Ready(Line):
    kind: Literal["ready"]


class Status(Line):
    kind: Literal["status"]
    state: str = Field(max_length=MAX_NAME)


class Count(Line):
    kind: Literal["count"]
    count: int = Field(ge=0)


class StreamText(Line):
    kind: Literal["stream"]
    name: Literal["stdout", "stderr"]
    text: str


class Data(Line):
    kind: Literal["data"]
    data: dict[Annotated[str, Field(max_length=MAX_NAME)], Any] = Field(max_length=MAX_MIME_TYPES)


class Error(Line):
    kind: Literal["error"]
    ename: str = Field(max_length=MAX_NAME)
    evalue: str
    traceback: list[str]


class Reply(Line):
    kind: Literal["reply"]
    status: str = Field(max_length=MAX_NAME)
    count: int | None = Field(None, ge=0)


class Died(Line):
    kind: Literal["died"]
    message: str = Field(max_length=MAX_NAME)


Message = Annotated[
    Ready | Status | Count | StreamText | Data | Error | Reply | Died,
    Field(discriminator="kind"),
]
MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)


def parse_line(line: bytes) -> Message | None:
    """The message on ``line``; None if it is none of the bridge's."""
    try:
        return MESSAGE.validate_json(line)
    except PydanticError:
        return None
