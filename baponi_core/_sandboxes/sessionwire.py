"""The request and response bodies of execd's bash sessions."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from baponi_core._sandboxes.commandwire import MAX_COMMAND

MAX_PATH = 4096


class CreateSessionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    cwd: str | None = Field(None, max_length=MAX_PATH)


class CreateSessionResponse(BaseModel):
    session_id: str


class RunInSessionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    command: str = Field(min_length=1, max_length=MAX_COMMAND)
    cwd: str | None = Field(None, max_length=MAX_PATH)
    timeout: int | None = Field(None, ge=0)  # ms; 0 or none: no limit, as execd's
