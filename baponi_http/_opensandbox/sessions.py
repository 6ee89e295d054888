"""execd's bash sessions: ``POST /session``, ``POST /session/{id}/run`` (the event stream
of ``/command``), ``DELETE /session/{id}``. Thin: the core's
:class:`~baponi_core._sandboxes.sessions.Sessions` does the work."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from baponi_core._models import parse
from baponi_core._sandboxes.sessions import Sessions
from baponi_core._sandboxes.sessionwire import (
    CreateSessionRequest,
    CreateSessionResponse,
    RunInSessionRequest,
)
from baponi_http._opensandbox.commands import events
from baponi_http._opensandbox.execd import live_of
from baponi_http._opensandbox.sse import stream
from baponi_http._requests import core_of, json_body


def sessions_of(request: Request) -> Sessions:
    return core_of(request).sandboxes.sessions(live_of(request))


async def create(request: Request) -> Response:
    asked = parse(CreateSessionRequest, await json_body(request, optional=True))
    session = await sessions_of(request).create(asked.cwd)
    return JSONResponse(CreateSessionResponse(session_id=session.id).model_dump())


async def run(request: Request) -> Response:
    asked = parse(RunInSessionRequest, await json_body(request))
    run = await sessions_of(request).run(
        request.path_params["session_id"], asked.command, asked.cwd, asked.timeout or None
    )
    return stream(events(run))


async def delete(request: Request) -> Response:
    await sessions_of(request).delete(request.path_params["session_id"])
    return Response(status_code=200)


ROUTES = [
    Route("/session", create, methods=["POST"]),
    Route("/session/{session_id}/run", run, methods=["POST"]),
    Route("/session/{session_id}", delete, methods=["DELETE"]),
]
