"""execd's commands: ``POST /command`` (streamed), ``DELETE /command?id=``, status and
logs. Thin: the core's :class:`~baponi_core._sandboxes.commands.Commands` does the work."""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from baponi_core._errors import ValidationError
from baponi_core._models import decimal, parse
from baponi_core._sandboxes.commands import CommandRun, Commands, NewCommand
from baponi_core._sandboxes.commandwire import CommandRequest, CommandStatus
from baponi_core._sandboxes.errors import UnknownCommand
from baponi_core._sandboxes.wire import timestamp
from baponi_http._opensandbox.execd import live_of, required
from baponi_http._opensandbox.sse import event, pinged, stream
from baponi_http._requests import core_of, json_body

TAIL_HEADER = "EXECD-COMMANDS-TAIL-CURSOR"


def commands_of(request: Request) -> Commands:
    return core_of(request).sandboxes.commands(live_of(request))


async def run_command(request: Request) -> Response:
    asked = parse(CommandRequest, await json_body(request))
    new = NewCommand(
        command=asked.command,
        cwd=asked.cwd,
        background=asked.background,
        timeout_ms=asked.timeout,
        uid=asked.uid,
        gid=asked.gid,
        envs=asked.envs or {},
    )
    run = await commands_of(request).start(new)
    return stream(events(run))


async def events(run: CommandRun) -> AsyncIterator[str]:
    yield event("init", text=run.id)
    if run.output is not None:
        decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        async with run.output:
            async for item in pinged(run.output):
                if item is None:
                    yield event("ping", text="pong")
                    continue
                name, chunk = item
                text = decoders[name].decode(chunk)
                if text:
                    yield event(name, text=text)
        await run.done.wait()
        for stream_name, decoder in decoders.items():
            if rest := decoder.decode(b"", final=True):
                yield event(stream_name, text=rest)
    elapsed = int(((run.finished_at or run.started_at) - run.started_at) * 1000)
    if run.background or run.exit_code == 0:
        yield event("execution_complete", execution_time=elapsed)
    else:
        error = {"ename": "CommandExecError", "evalue": str(run.exit_code), "traceback": []}
        yield event("error", error=error, execution_time=elapsed)


async def interrupt(request: Request) -> Response:
    await commands_of(request).interrupt(required(request, "id"))
    return Response(status_code=200)


async def status(request: Request) -> Response:
    run = commands_of(request).get(request.path_params["command_id"])
    if run is None:
        raise UnknownCommand(f"no command {request.path_params['command_id']} in this sandbox")
    body = CommandStatus(
        id=run.id,
        content=run.content,
        running=run.running,
        exit_code=run.exit_code,
        error=run.error,
        started_at=timestamp(run.started_at),
        finished_at=None if run.finished_at is None else timestamp(run.finished_at),
    )
    return JSONResponse(body.model_dump())


async def logs(request: Request) -> Response:
    run = commands_of(request).get(request.path_params["command_id"])
    if run is None or not run.background:
        raise ValidationError("no such background command")
    cursor = decimal(request.query_params.get("cursor", "0"))
    if cursor is None:
        raise ValidationError("cursor must be a byte offset")
    return Response(
        run.log.since(cursor),
        media_type="text/plain; charset=utf-8",
        headers={TAIL_HEADER: str(run.log.end)},
    )


ROUTES = [
    Route("/command", run_command, methods=["POST"]),
    Route("/command", interrupt, methods=["DELETE"]),
    Route("/command/status/{command_id}", status, methods=["GET"]),
    Route("/command/{command_id}/logs", logs, methods=["GET"]),
]
