"""Routes of the REST API. Each handler authenticates, parses, calls one service, answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from baponi_core._app import Core
from baponi_core._config import Settings
from baponi_core._errors import ValidationError
from baponi_core._models import (
    Deleted,
    ExecuteRequest,
    FileList,
    FileRequest,
    Health,
    Queued,
    Ready,
    decimal,
    parse,
)
from baponi_core._records import DeliveryMode, Principal
from baponi_http._errors import HANDLERS, error_response
from baponi_http._openapi import OPERATIONS, Operation, document
from baponi_http._opensandbox import opensandbox_mount
from baponi_http._requests import core_of, json_body, principal_of

NDJSON = "application/x-ndjson"


def delivery_mode(request: Request) -> DeliveryMode:
    if "respond-async" in request.headers.get("prefer", "").lower():
        return DeliveryMode.WEBHOOK
    if NDJSON in request.headers.get("accept", "").lower():
        return DeliveryMode.STREAMING
    return DeliveryMode.INLINE


def ndjson(lines: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        lines, media_type=NDJSON, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


async def execute(request: Request) -> Response:
    principal = await principal_of(request)
    body = parse(ExecuteRequest, await json_body(request))
    mode = delivery_mode(request)
    submission = await core_of(request).executions.submit(principal, body, mode)
    if mode is DeliveryMode.WEBHOOK:
        return JSONResponse(Queued(trace_id=submission.trace_id).model_dump(), status_code=202)
    if mode is DeliveryMode.STREAMING:
        return ndjson(submission.lines())
    result = await submission.result()
    return JSONResponse(result.model_dump())


async def get_execution(request: Request) -> Response:
    principal = await principal_of(request)
    execution = await core_of(request).executions.get(principal, request.path_params["trace_id"])
    return JSONResponse(execution.model_dump(mode="json"))


async def execution_output(request: Request) -> Response:
    principal = await principal_of(request)
    after = decimal(request.query_params.get("after_seq", "0"))
    if after is None:
        raise ValidationError("after_seq must be a non-negative integer")
    lines = await core_of(request).executions.events(
        principal, request.path_params["trace_id"], after
    )
    return ndjson(lines)


async def cancel_execution(request: Request) -> Response:
    principal = await principal_of(request)
    answer = await core_of(request).executions.cancel(principal, request.path_params["trace_id"])
    return JSONResponse(answer.model_dump())


def app_url(request: Request) -> str:
    """The URL of this app's root, the prefix it is mounted under included (Starlette's
    ``base_url`` is the outermost app's), where its signed-file routes answer."""
    root = request.scope.get("root_path", "").rstrip("/")
    return str(request.base_url.replace(path=root + "/"))


def public_url(request: Request) -> str:
    return core_of(request).settings.base_url(app_url(request))


async def file_request(request: Request) -> tuple[Principal, FileRequest]:
    principal = await principal_of(request)
    return principal, parse(FileRequest, await json_body(request))


async def files_list(request: Request) -> Response:
    principal, body = await file_request(request)
    entries = await core_of(request).files.list_files(principal, body)
    return JSONResponse(FileList(files=entries).model_dump())


async def files_upload_url(request: Request) -> Response:
    principal, body = await file_request(request)
    signed = await core_of(request).files.upload_url(principal, body, public_url(request))
    return JSONResponse(signed.model_dump())


async def files_download_url(request: Request) -> Response:
    principal, body = await file_request(request)
    signed = await core_of(request).files.download_url(principal, body, public_url(request))
    return JSONResponse(signed.model_dump())


async def files_delete(request: Request) -> Response:
    principal, body = await file_request(request)
    await core_of(request).files.delete(principal, body)
    return JSONResponse(Deleted().model_dump())


async def signed_download(request: Request) -> Response:
    files = core_of(request).files
    grant = await files.verify(request.path_params["token"], "GET")
    size, chunks = await files.download(grant)
    headers = {"Content-Length": str(size), "Cache-Control": "private, no-store"}
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)


async def signed_upload(request: Request) -> Response:
    files = core_of(request).files
    grant = await files.verify(request.path_params["token"], "PUT")
    declared = request.headers.get("content-length")
    if declared is not None and declared != str(grant.size):
        raise ValidationError(f"Content-Length must be the signed size, {grant.size} bytes")
    try:
        await files.upload(grant, request.stream())
    except ClientDisconnect:  # the upload was abandoned and left nothing: no one to answer
        return Response(status_code=400)
    return Response(status_code=200)


async def signed_file(request: Request) -> Response:
    if request.method == "PUT":
        return await signed_upload(request)
    return await signed_download(request)


# The signed-file routes need no key: the token is the authorisation. One route for both
# methods, so that a 405 names both in its Allow header.
SIGNED_ROUTES = [Route("/v1/files/signed/{token}", signed_file, methods=["GET", "PUT"])]


async def health(request: Request) -> Response:
    return JSONResponse(Health().model_dump())


async def ready(request: Request) -> Response:
    problems = await core_of(request).problems()
    if problems:
        detail = ", ".join(f"{part}: {why}" for part, why in problems.items())
        return error_response(503, "service_unavailable", f"not ready ({detail})")
    return JSONResponse(Ready().model_dump())


class Extension(Protocol):
    """More routes on the app (the MCP endpoint, say), with something that runs while the
    app does, and the operations of those routes for the OpenAPI document. Handlers reach
    the core as ``request.app.state.core``."""

    def routes(self) -> Sequence[BaseRoute]: ...
    def operations(self) -> Sequence[Operation]: ...
    def running(self) -> AbstractAsyncContextManager[None]: ...


def openapi_route(operations: Sequence[Operation]) -> Route:
    """``GET /openapi.json``: the document of ``operations``, made once."""
    body = JSONResponse(document(operations)).body

    async def openapi(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Route("/openapi.json", openapi, methods=["GET"])


def create_app(
    settings: Settings, extensions: Sequence[Extension] = (), core: Core | None = None
) -> Starlette:
    """The REST API over a core of ``settings``, opened and drained with the app; or over
    ``core``, already open (its start-up failures said before any serving), which the
    caller closes."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Extensions close first: their calls in flight end before the core drains.
        async with AsyncExitStack() as running:
            app.state.core = core or await running.enter_async_context(Core(settings))
            for extension in extensions:
                await running.enter_async_context(extension.running())
            yield

    return _starlette(api_routes(extensions), lifespan=lifespan)


def create_mounted_app(core: Core) -> Starlette:
    """The REST API over ``core``, with no lifespan of its own: for a mount in another
    application, whose lifespan a mounted app never sees; whoever owns the core opens
    and closes it."""
    app = _starlette(api_routes(()))
    app.state.core = core
    return app


def api_routes(extensions: Sequence[Extension]) -> list[BaseRoute]:
    return [
        Route("/v1/sandbox/execute", execute, methods=["POST"]),
        Route("/v1/executions/{trace_id}", get_execution, methods=["GET"]),
        Route("/v1/executions/{trace_id}/output", execution_output, methods=["GET"]),
        Route("/v1/executions/{trace_id}/cancel", cancel_execution, methods=["POST"]),
        Route("/v1/files/list", files_list, methods=["POST"]),
        Route("/v1/files/upload_url", files_upload_url, methods=["POST"]),
        Route("/v1/files/download_url", files_download_url, methods=["POST"]),
        Route("/v1/files", files_delete, methods=["DELETE"]),
        *SIGNED_ROUTES,
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        opensandbox_mount(),
        openapi_route([*OPERATIONS, *(o for e in extensions for o in e.operations())]),
        *(route for extension in extensions for route in extension.routes()),
    ]


def create_files_app(core: Core, extensions: Sequence[Extension] = ()) -> Starlette:
    """Only the signed-file routes (and the extensions'), over ``core``, with no lifespan:
    what ``baponi-mcp`` serves on loopback so that the URLs it hands out for local storage
    work, and the MCP app of :func:`baponi_mcp.mcp_app`."""
    app = _starlette([*SIGNED_ROUTES, *(route for e in extensions for route in e.routes())])
    app.state.core = core
    return app


def _starlette(routes: Sequence[BaseRoute], **options: Any) -> Starlette:
    app = Starlette(routes=routes, exception_handlers=HANDLERS, **options)
    app.router.redirect_slashes = False  # an unknown path is a 404 with the error body
    return app
