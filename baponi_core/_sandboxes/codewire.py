"""The request and response bodies of execd's code contexts."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from baponi_core._sandboxes.commandwire import MAX_COMMAND

MAX_LANGUAGE = 32
MAX_ID = 64


class ContextRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    language: str = Field(min_length=1, max_length=MAX_LANGUAGE)
    cwd: str | None = Field(None, max_length=4096)


class ContextRef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(default=None, max_length=MAX_ID)
    language: str | None = Field(default=None, max_length=MAX_LANGUAGE)


class RunCodeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: str = Field(min_length=1, max_length=MAX_COMMAND)
    context: ContextRef | None = None


class ContextBody(BaseModel):
    id: str
    language: str
