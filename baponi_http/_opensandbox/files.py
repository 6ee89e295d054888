"""execd's filesystem and metrics endpoints. Thin: the request parsed, the core's
:mod:`~baponi_core._sandboxes.files`, :mod:`~baponi_core._sandboxes.filestream` and
:mod:`~baponi_core._sandboxes.metrics` do the work (inside the sandbox)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from baponi_core._errors import BaponiError, ValidationError
from baponi_core._models import decimal
from baponi_core._sandboxes import files, filestream, metrics
from baponi_core._sandboxes.errors import InvalidFile, InvalidFileMetadata
from baponi_core._sandboxes.fileswire import (
    Moves,
    Permissions,
    Replacements,
    UploadMetadata,
    validated,
)
from baponi_http._opensandbox.execd import live_of, required
from baponi_http._opensandbox.multipart import FormReader
from baponi_http._opensandbox.sse import HEADERS
from baponi_http._requests import json_body

METADATA_BYTES = 64 << 10
OCTETS = "application/octet-stream"


def done() -> Response:
    return Response(status_code=200)  # execd's bodiless success: 200, empty


def paths_of(request: Request) -> list[str]:
    return request.query_params.getlist("path")


def number(request: Request, name: str) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    found = decimal(text)
    if found is None:
        raise ValidationError(f"{name} must be a whole number, not {text[:40]!r}")
    return found


async def get_info(request: Request) -> Response:
    found = await files.info(live_of(request), paths_of(request))
    return JSONResponse({given: f.model_dump(mode="json") for given, f in found.items()})


async def delete_files(request: Request) -> Response:
    await files.delete_files(live_of(request), paths_of(request))
    return done()


async def move(request: Request) -> Response:
    moves = validated(Moves, await json_body(request))
    await files.move(live_of(request), [(m.src, m.dest) for m in moves])
    return done()


async def permissions(request: Request) -> Response:
    asked = validated(Permissions, await json_body(request))
    await files.set_permissions(live_of(request), {p: a.permission() for p, a in asked.items()})
    return done()


async def search(request: Request) -> Response:
    pattern = request.query_params.get("pattern") or "**"
    found = await files.search(live_of(request), required(request, "path"), pattern)
    return JSONResponse([f.model_dump(mode="json") for f in found])


async def replace(request: Request) -> Response:
    asked = validated(Replacements, await json_body(request))
    edits = {path: (item.old, item.new) for path, item in asked.items()}
    counts = await files.replace(live_of(request), edits)
    if request.query_params.get("verbose", "").lower() != "true":
        return done()
    return JSONResponse({path: {"replacedCount": n} for path, n in counts.items()})


async def upload(request: Request) -> Response:
    """Pairs of parts: ``metadata`` (JSON), then ``file``, as many pairs as files."""
    live, form, count = live_of(request), FormReader(request), 0
    while (part := await form.next_part()) is not None:
        if part.name != "metadata":
            raise InvalidFile(f"part {part.name[:40]!r} where a metadata part was expected")
        metadata = _metadata(await form.read(METADATA_BYTES))
        part = await form.next_part()
        if part is None or part.name != "file":
            raise InvalidFile("a metadata part without the file part after it")
        await filestream.upload(live, metadata.path, form.data(), metadata.permission())
        count += 1
    if count == 0:
        raise InvalidFile("the form holds no file")
    return done()


def _metadata(data: bytes) -> UploadMetadata:
    try:
        return UploadMetadata.model_validate_json(data)
    except ValueError:
        raise InvalidFileMetadata(
            "the metadata part is not {path, mode?, owner?, group?}"
        ) from None


async def download(request: Request) -> Response:
    found = await filestream.download(
        live_of(request),
        required(request, "path"),
        range_header=request.headers.get("range"),
        offset=number(request, "offset"),
        limit=number(request, "limit"),
    )
    done_with = BackgroundTask(found.close)  # a HEAD reads nothing: its process ends here
    if found.lines:
        return StreamingResponse(
            found.chunks, media_type="text/plain; charset=utf-8", background=done_with
        )
    name = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in found.name)
    headers = {
        "Content-Disposition": f"attachment; filename=\"{name}\"; filename*=UTF-8''"
        + quote(found.name, safe=""),
        "Accept-Ranges": "bytes",
        "Content-Length": str(found.span.length if found.span else found.size),
    }
    if found.span is None:
        return StreamingResponse(
            found.chunks, headers=headers, media_type=OCTETS, background=done_with
        )
    headers["Content-Range"] = f"bytes {found.span.start}-{found.span.last}/{found.size}"
    return StreamingResponse(found.chunks, 206, headers, OCTETS, done_with)


async def list_directory(request: Request) -> Response:
    depth = number(request, "depth")
    found = await files.list_directory(
        live_of(request), required(request, "path"), 1 if depth is None else depth
    )
    return JSONResponse([f.model_dump(mode="json") for f in found])


async def make_directories(request: Request) -> Response:
    asked = validated(Permissions, await json_body(request))
    await files.make_directories(live_of(request), {p: a.permission() for p, a in asked.items()})
    return done()


async def remove_directories(request: Request) -> Response:
    await files.remove_directories(live_of(request), paths_of(request))
    return done()


async def get_metrics(request: Request) -> Response:
    return JSONResponse((await metrics.sample(live_of(request))).model_dump())


async def watch_metrics(request: Request) -> Response:
    return StreamingResponse(_frames(request), media_type="text/event-stream", headers=HEADERS)


async def _frames(request: Request) -> AsyncIterator[str]:
    """Bare JSON and one newline per frame (execd's); an error ends it as a frame."""
    try:
        async for sample in metrics.watch(live_of(request)):
            yield sample.model_dump_json() + "\n"
    except BaponiError as exc:
        yield json.dumps({"error": exc.message}) + "\n"


ROUTES = [
    Route("/files/info", get_info, methods=["GET"]),
    Route("/files", delete_files, methods=["DELETE"]),
    Route("/files/mv", move, methods=["POST"]),
    Route("/files/permissions", permissions, methods=["POST"]),
    Route("/files/search", search, methods=["GET"]),
    Route("/files/replace", replace, methods=["POST"]),
    Route("/files/upload", upload, methods=["POST"]),
    Route("/files/download", download, methods=["GET"]),
    Route("/directories/list", list_directory, methods=["GET"]),
    Route("/directories", make_directories, methods=["POST"]),
    Route("/directories", remove_directories, methods=["DELETE"]),
    Route("/metrics", get_metrics, methods=["GET"]),
    Route("/metrics/watch", watch_metrics, methods=["GET"]),
]
