"""Baponi's core, embedded in a Python program: run code in sandboxes, manage its
organisations, keys, profiles and volumes, with no server in between.

    import baponi_core

    async with baponi_core.Embedded("~/.baponi") as baponi:
        result = await baponi.session().execute("print(6 * 7)")

The names below are the public API (docs/library.md says what is stable); every module
of this package is private by name (``baponi_core._sandbox``...) and may change.
"""

from baponi_core._config import Settings
from baponi_core._embedded import Embedded
from baponi_core._errors import (
    BaponiError,
    CannotStart,
    Conflict,
    Forbidden,
    NoSpace,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from baponi_core._events import Event, KeepaliveEvent, OutputEvent, ResultEvent, StatusEvent
from baponi_core._homelock import HomeInUse
from baponi_core._management import Management, ProfileLimits
from baponi_core._models import ExecutionView, FileEntry, SandboxResult
from baponi_core._records import ApiKey, ExecutionStatus, Org, Profile, Volume
from baponi_core._sandbox.uids import UidRange
from baponi_core._session import Execution, RunOptions, Session

__all__ = [
    "ApiKey",
    "BaponiError",
    "CannotStart",
    "Conflict",
    "Embedded",
    "Event",
    "Execution",
    "ExecutionStatus",
    "ExecutionView",
    "FileEntry",
    "Forbidden",
    "HomeInUse",
    "KeepaliveEvent",
    "Management",
    "NoSpace",
    "NotFound",
    "Org",
    "OutputEvent",
    "Profile",
    "ProfileLimits",
    "RateLimited",
    "ResultEvent",
    "RunOptions",
    "SandboxResult",
    "Session",
    "Settings",
    "StatusEvent",
    "UidRange",
    "Unauthorized",
    "Unavailable",
    "ValidationError",
    "Volume",
]
