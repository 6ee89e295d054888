"""The one mapping from core errors to MCP.

What the model can fix (a bad argument, a missing file, a busy thread) becomes a
``ToolError``, which the SDK answers as an ``isError`` tool result the model reads. A
refusal of the request itself (no or a bad key, a plan limit, a server going down) is a
JSON-RPC error: the client, not the model, has to act on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mcp import MCPError
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import INTERNAL_ERROR

from baponi_core._errors import BaponiError, Conflict, NotFound, ValidationError

MODEL_CAN_FIX = (ValidationError, NotFound, Conflict)

# JSON-RPC codes of refusals, in the server-defined range; the last two digits echo the
# HTTP status REST answers. The REST error code and Retry-After go in ``data``.
CODES = {
    "unauthorized": -32041,
    "forbidden": -32043,
    "rate_limited": -32029,
    "service_unavailable": -32053,
}


def refusal(exc: BaponiError) -> MCPError:
    """The JSON-RPC error for a refused request; its message never carries host details."""
    data: dict[str, object] = {"error": exc.code}
    if exc.retry_after is not None:
        data["retry_after"] = exc.retry_after
    return MCPError(code=CODES.get(exc.code, INTERNAL_ERROR), message=exc.message, data=data)


@contextmanager
def translated() -> Iterator[None]:
    """Raise core errors as their MCP form."""
    try:
        yield
    except MODEL_CAN_FIX as exc:
        raise ToolError(exc.message) from None
    except BaponiError as exc:
        raise refusal(exc) from None
