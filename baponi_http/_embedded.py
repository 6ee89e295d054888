"""The REST API as an ASGI app over an :class:`baponi_core.Embedded` core, to mount in
another Starlette or FastAPI application."""

from __future__ import annotations

from starlette.applications import Starlette

from baponi_core import Embedded
from baponi_core._embedded import internal_core
from baponi_http._app import create_files_app, create_mounted_app


def rest_app(embedded: Embedded) -> Starlette:
    """Baponi's REST API (``/v1/...``, ``/health``, ``/ready``, ``/openapi.json``) over
    ``embedded``, for ``app.mount("/sandbox", rest_app(embedded))``: API keys, limits and
    the signed file URLs (which carry the prefix) work as under ``baponi serve``. It has no
    lifespan: the embedding application opens and closes ``embedded``."""
    return create_mounted_app(internal_core(embedded))


def files_app(embedded: Embedded) -> Starlette:
    """Only the routes answering the signed file URLs of local storage, for programs that
    hand such URLs out without the REST API (:func:`baponi_mcp.add_tools`)."""
    return create_files_app(internal_core(embedded))
