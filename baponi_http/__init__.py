"""The HTTP adapter: Baponi's REST API over the core services, on Starlette.

What other packages may use: :func:`create_app` (with :class:`Extension` for more
routes, described for the OpenAPI document as :class:`Operation` and :class:`Answer`),
:func:`create_files_app` (the signed-file routes alone), :func:`error_for` (the one
mapping of core errors to responses), and the uvicorn servers of :mod:`baponi_http.server`.
"""

from baponi_http.app import Extension, create_app, create_files_app
from baponi_http.errors import error_for
from baponi_http.openapi import Answer, Operation
from baponi_http.server import DrainingServer, IdleTimeoutH11, serving

__all__ = [
    "Answer",
    "DrainingServer",
    "Extension",
    "IdleTimeoutH11",
    "Operation",
    "create_app",
    "create_files_app",
    "error_for",
    "serving",
]
