"""The HTTP adapter: Baponi's REST API over the core services, on Starlette.

For programs embedding Baponi (docs/library.md): :func:`rest_app`, the REST API to mount
in their own application, and :func:`files_app`, the signed-file routes alone.

What this project's other packages use besides: :func:`create_app` (with
:class:`Extension` for more routes, described for the OpenAPI document as
:class:`Operation` and :class:`Answer`), :func:`create_files_app` (the signed-file routes
alone), :func:`app_url` (where an app's routes answer, under a mount too),
:func:`error_for` (the one mapping of core errors to responses), and the uvicorn servers
of :mod:`baponi_http._server` with their HTTP protocol, :class:`BoundedHttpTools`.
"""

from baponi_http._app import Extension, app_url, create_app, create_files_app
from baponi_http._embedded import files_app, rest_app
from baponi_http._errors import error_for
from baponi_http._openapi import Answer, Operation
from baponi_http._protocol import BoundedHttpTools
from baponi_http._server import IDLE_TIMEOUT_S, DrainingServer, serving

__all__ = [
    "IDLE_TIMEOUT_S",
    "Answer",
    "BoundedHttpTools",
    "DrainingServer",
    "Extension",
    "Operation",
    "app_url",
    "create_app",
    "create_files_app",
    "error_for",
    "files_app",
    "rest_app",
    "serving",
]
