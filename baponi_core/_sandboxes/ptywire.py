"""The bodies of execd's PTY sessions, and the JSON frames of their WebSocket
(OpenSandbox's ``components/execd/PTY.md``; binary frames: ``terminals``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from baponi_core._sandboxes.commandwire import MAX_COMMAND
from baponi_core._sandboxes.sessionwire import MAX_PATH

MAX_STDIN_TEXT = 1 << 20  # of a JSON ``stdin`` frame's data


class CreatePtyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    cwd: str | None = Field(None, max_length=MAX_PATH)
    command: str | None = Field(None, max_length=MAX_COMMAND)  # instead of an interactive bash


class CreatePtyResponse(BaseModel):
    session_id: str


class PtyStatus(BaseModel):
    session_id: str
    running: bool
    output_offset: int


class ClientFrame(BaseModel):
    """A JSON frame from the client: ``resize``, ``signal``, ``ping`` or ``stdin``."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["resize", "signal", "ping", "stdin"]
    data: str = Field("", max_length=MAX_STDIN_TEXT)
    cols: int = Field(0, ge=0, le=65535)
    rows: int = Field(0, ge=0, le=65535)
    signal: str = Field("", max_length=16)
