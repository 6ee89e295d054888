"""A sandbox's execd API, served by this server under ``/opensandbox/execd/{id}``: each
request is let in only with that sandbox's own token (``X-EXECD-ACCESS-TOKEN``, from the
lifecycle API's ``endpoints/44772``), checked before any route; the handlers find their
sandbox with :func:`live_of`."""

from __future__ import annotations

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from baponi_core._app import Core
from baponi_core._sandboxes.errors import MissingQuery
from baponi_core._sandboxes.live import Live

LIVE = "baponi.live"  # the scope key of the request's sandbox
UNAUTHORIZED = {"error": "Unauthorized: invalid or missing header X-EXECD-ACCESS-TOKEN"}
CLOSE_REFUSED = 4000  # + the HTTP status: a WebSocket refused where no denial can be sent
CLOSE_UNAUTHORIZED = CLOSE_REFUSED + 401


class TokenGuard:
    """Lets a request through to ``app`` only with the token of the sandbox it names."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        core: Core = scope["app"].state.core
        token = HTTPConnection(scope).headers.get("x-execd-access-token", "")
        live = core.sandboxes.opened(scope["path_params"].get("sandbox_id", ""))
        if live is None or not token or not live.grants(token):
            response = JSONResponse(UNAUTHORIZED, status_code=401)
            if scope["type"] == "websocket":
                await deny(WebSocket(scope, receive, send), response, CLOSE_UNAUTHORIZED)
            else:
                await response(scope, receive, send)
            return
        live.touch()
        scope[LIVE] = live
        await self.app(scope, receive, send)


def required(request: Request, name: str) -> str:
    """A query parameter that must be there and not empty (execd's MISSING_QUERY)."""
    value = request.query_params.get(name)
    if not value:
        raise MissingQuery(f"the query parameter {name} is required")
    return value


def live_of(request: HTTPConnection) -> Live:
    live: Live = request.scope[LIVE]
    return live


async def deny(websocket: WebSocket, response: Response, close_code: int) -> None:
    """Refuse a WebSocket before its handshake: with an HTTP response where the server
    can send one (ASGI's denial extension, uvicorn's), else by closing it with
    ``close_code``."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(close_code)


async def ping(request: Request) -> Response:
    live_of(request).check_usable()
    return Response(status_code=200)


def execd_app(routes: list[BaseRoute]) -> TokenGuard:
    return TokenGuard(
        Router([Route("/ping", ping, methods=["GET"]), *routes], redirect_slashes=False)
    )
