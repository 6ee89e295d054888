"""The request and response bodies of execd's commands."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_COMMAND = 1 << 20  # a command's text, as large as a script of the Baponi API


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    command: str = Field(min_length=1, max_length=MAX_COMMAND)
    cwd: str | None = Field(None, max_length=4096)
    background: bool = False
    timeout: int | None = Field(None, ge=1)  # ms
    uid: int | None = None
    gid: int | None = None
    envs: dict[str, str] | None = Field(None, max_length=256)


class CommandStatus(BaseModel):
    id: str
    content: str
    running: bool
    exit_code: int | None
    error: str | None
    started_at: str
    finished_at: str | None
