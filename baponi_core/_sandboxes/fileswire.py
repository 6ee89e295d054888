"""The request bodies of execd's filesystem API (the SDK's shapes)."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from baponi_core._errors import ValidationError
from baponi_core._sandboxes.files import Permission

MAX_ENTRIES = 1000  # paths of one request
PATH = Field(min_length=1, max_length=4096)
DEFAULT_MODE = 755  # what the SDK sends when it is not told
T = TypeVar("T", bound=Sized)


class PermissionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    mode: int = DEFAULT_MODE
    owner: str | None = Field(None, max_length=64)
    group: str | None = Field(None, max_length=64)

    def permission(self) -> Permission:
        return Permission(self.mode, self.owner or None, self.group or None)


class UploadMetadata(PermissionBody):
    path: str = PATH
    mode: int = 0  # none given: the file is made as the sandbox's umask says


class MoveItem(BaseModel):
    src: str = PATH
    dest: str = PATH


class ReplaceItem(BaseModel):
    old: str = Field(min_length=1)
    new: str


Permissions = TypeAdapter(dict[str, PermissionBody])
Moves = TypeAdapter(list[MoveItem])
Replacements = TypeAdapter(dict[str, ReplaceItem])


def validated(adapter: TypeAdapter[T], data: Any) -> T:
    """``data`` as ``adapter`` reads it, at most MAX_ENTRIES of them; our ValidationError
    with the first problem otherwise."""
    try:
        found = adapter.validate_python(data)
    except pydantic.ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValidationError(f"{where}: {err['msg']}" if where else err["msg"]) from None
    if len(found) > MAX_ENTRIES:
        raise ValidationError(f"at most {MAX_ENTRIES} entries at once")
    return found
