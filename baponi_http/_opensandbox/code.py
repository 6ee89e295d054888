"""execd's code contexts: ``/code/context``, ``/code/contexts``, ``POST /code`` (streamed)
and its interrupt. Thin: the core's :class:`~baponi_core._sandboxes.contexts.Contexts`
does the work; ``POST /code`` without a language is a command (the commands core)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from baponi_core._models import parse
from baponi_core._sandboxes.codewire import (
    ContextBody,
    ContextRef,
    ContextRequest,
    RunCodeRequest,
)
from baponi_core._sandboxes.commands import NewCommand
from baponi_core._sandboxes.contexts import (
    CodeEvent,
    CodeRun,
    Context,
    Contexts,
    Count,
    Finished,
    Output,
    Status,
)
from baponi_http._opensandbox.commands import commands_of
from baponi_http._opensandbox.commands import events as command_events
from baponi_http._opensandbox.execd import live_of, required
from baponi_http._opensandbox.sse import event, pinged, stream
from baponi_http._requests import core_of, json_body


def contexts_of(request: Request) -> Contexts:
    return core_of(request).sandboxes.contexts(live_of(request))


def body(context: Context) -> dict[str, str]:
    return ContextBody(id=context.id, language=context.language).model_dump()


async def create_context(request: Request) -> Response:
    asked = parse(ContextRequest, await json_body(request))
    context = await contexts_of(request).create(asked.language, asked.cwd)
    return JSONResponse(body(context))


async def list_contexts(request: Request) -> Response:
    language = request.query_params.get("language") or None
    return JSONResponse([body(c) for c in contexts_of(request).list(language)])


async def get_context(request: Request) -> Response:
    return JSONResponse(body(contexts_of(request).get(request.path_params["context_id"])))


async def delete_context(request: Request) -> Response:
    await contexts_of(request).delete(request.path_params["context_id"])
    return Response(status_code=200)


async def delete_contexts(request: Request) -> Response:
    await contexts_of(request).delete_language(required(request, "language"))
    return Response(status_code=200)


async def run_code(request: Request) -> Response:
    asked = parse(RunCodeRequest, await json_body(request))
    context = asked.context or ContextRef()
    if not context.id and not context.language:  # execd's: code with no language is a command
        command = await commands_of(request).start(NewCommand(command=asked.code))
        return stream(command_events(command))
    run = await contexts_of(request).run(asked.code, context.id, context.language or "")
    return stream(_events(run))


async def _events(run: CodeRun) -> AsyncIterator[str]:
    """The run's events; those that came at once leave together, one write each time."""
    yield event("init", text=run.context_id)
    async with run.events:
        async for item in pinged(run.events):
            if item is None:
                yield event("ping", text="pong")
                continue
            frames = [_frame(item)]
            with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
                while True:
                    frames.append(_frame(run.events.receive_nowait()))
            if run.finished is None:
                yield "".join(frames)
                continue
            yield "".join(frames) + _end(run.finished)
            return
    assert run.finished is not None  # set before the stream ends
    yield _end(run.finished)


def _frame(item: CodeEvent) -> str:
    if isinstance(item, Status):
        return event("status", text=item.state)
    if isinstance(item, Output):
        return event(item.stream, text=item.text)
    if isinstance(item, Count):
        return event("execution_count", execution_count=item.count)
    results = {("text" if k == "text/plain" else k): v for k, v in item.data.items()}
    return event("result", results=results)


def _end(finished: Finished) -> str:
    if finished.failure is None:
        return event("execution_complete", execution_time=finished.elapsed_ms)
    failure = finished.failure
    error = {"ename": failure.ename, "evalue": failure.evalue, "traceback": failure.traceback}
    return event("error", error=error, execution_time=finished.elapsed_ms)


async def interrupt(request: Request) -> Response:
    run_id = required(request, "id")
    if commands_of(request).get(run_id) is not None:  # a command that POST /code ran
        await commands_of(request).interrupt(run_id)
    else:
        await contexts_of(request).interrupt(run_id)
    return Response(status_code=200)


ROUTES = [
    Route("/code/context", create_context, methods=["POST"]),
    Route("/code/contexts", list_contexts, methods=["GET"]),
    Route("/code/contexts", delete_contexts, methods=["DELETE"]),
    Route("/code/contexts/{context_id}", get_context, methods=["GET"]),
    Route("/code/contexts/{context_id}", delete_context, methods=["DELETE"]),
    Route("/code", run_code, methods=["POST"]),
    Route("/code", interrupt, methods=["DELETE"]),
]
