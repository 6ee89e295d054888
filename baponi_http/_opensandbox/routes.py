"""The route table of ``/opensandbox``: the lifecycle API, and each sandbox's execd
behind its token guard, with OpenSandbox's error body for both."""

from __future__ import annotations

from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import Mount, Router

from baponi_http._opensandbox import (
    code,
    commands,
    files,
    lifecycle,
    proxy,
    pty,
    sessions,
    wsproxy,
)
from baponi_http._opensandbox.errors import HANDLERS
from baponi_http._opensandbox.execd import execd_app

PREFIX = "/opensandbox"


def opensandbox_mount() -> Mount:
    """The mount for the REST app: its handlers reach the core as the app's state."""
    execd = [
        *commands.ROUTES,
        *files.ROUTES,
        *sessions.ROUTES,
        *pty.ROUTES,
        *proxy.ROUTES,
        *wsproxy.ROUTES,
        *code.ROUTES,
    ]
    routes = [*lifecycle.ROUTES, Mount("/execd/{sandbox_id}", app=execd_app(execd))]
    router = Router(routes, redirect_slashes=False)
    return Mount(PREFIX, app=ExceptionMiddleware(router, handlers=HANDLERS))
