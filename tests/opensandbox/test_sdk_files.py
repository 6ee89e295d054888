"""The filesystem and metrics endpoints of execd through the official ``opensandbox`` SDK
1.1.1, unmodified, against a real ``baponi serve``; and over raw HTTP what the SDK hides:
status codes, headers, error bodies, the multipart pairs, the watch frames."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from opensandbox import SandboxSync
from opensandbox.config.connection_sync import ConnectionConfigSync
from opensandbox.exceptions import SandboxException
from opensandbox.models.filesystem import (
    ContentReplaceEntry,
    DirectoryListEntry,
    MoveEntry,
    SearchEntry,
    SetPermissionEntry,
    WriteEntry,
)

from tests.harness import Server, start_server, stop_server, unique
from tests.opensandbox.clients import RUNTIME, lifecycle, opened

pytestmark = pytest.mark.slow
HOME = "/home/baponi"


@pytest.fixture(scope="module")
def osb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("osb-files") / "home")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def sandbox(osb_server: Server) -> Iterator[SandboxSync]:
    config = ConnectionConfigSync(
        domain=f"{osb_server.url}/opensandbox",
        api_key=osb_server.key,
        request_timeout=timedelta(seconds=60),
    )
    box = SandboxSync.create(RUNTIME, connection_config=config, metadata={"t": unique()})
    yield box
    with contextlib.suppress(SandboxException):
        box.kill()


@pytest.fixture(scope="module")
def execd(osb_server: Server) -> Iterator[httpx.Client]:
    """A raw client of another sandbox's execd, with the headers its endpoint gives."""
    with opened(osb_server) as execd:
        yield execd.client


def test_write_read_info_list_search_and_replace(sandbox: SandboxSync) -> None:
    files = sandbox.files
    files.write_file("~/w/a.txt", "alpha beta alpha\n", mode=640)
    files.write_files([WriteEntry(path="$HOME/w/sub/b.py", data=b"print(1)\n")])
    assert files.read_file("~/w/a.txt") == "alpha beta alpha\n"
    info = files.get_file_info(["~/w/a.txt"])["~/w/a.txt"]
    assert (info.path, info.entry_type, info.size, info.mode) == (
        f"{HOME}/w/a.txt", "file", 17, 640
    )  # fmt: skip
    assert info.owner == "baponi" and info.modified_at.tzinfo is not None
    listed = files.list_directory(DirectoryListEntry(path="~/w", depth=2))
    assert [e.path for e in listed] == [f"{HOME}/w/{n}" for n in ("a.txt", "sub", "sub/b.py")]
    found = files.search(SearchEntry(path="~/w", pattern="*.py"))
    assert [e.path for e in found] == [f"{HOME}/w/sub/b.py"]
    done = files.replace_contents_detailed(
        [ContentReplaceEntry(path="~/w/a.txt", old_content="alpha", new_content="gamma")]
    )
    assert [(r.path, r.replaced_count) for r in done] == [("~/w/a.txt", 2)]
    assert files.read_file("~/w/a.txt") == "gamma beta gamma\n"
    assert files.get_file_info(["~/w/a.txt"])["~/w/a.txt"].mode == 640  # kept


def test_ranges_lines_moves_permissions_and_removal(sandbox: SandboxSync) -> None:
    files = sandbox.files
    files.write_file("~/r/digits", "0123456789\nline2\nline3\n")
    assert files.read_bytes("~/r/digits", range_header="bytes=2-4") == b"234"
    assert files.read_file("~/r/digits", offset=2, limit=1) == "line2\n"
    files.move_files([MoveEntry(src="~/r/digits", dest="~/r/moved/digits")])
    files.set_permissions([SetPermissionEntry(path="~/r/moved/digits", mode=600)])
    assert files.get_file_info(["~/r/moved/digits"])["~/r/moved/digits"].mode == 600
    files.create_directories([WriteEntry(path="~/r/x/y", mode=700)])
    assert files.get_file_info(["~/r/x/y"])["~/r/x/y"].mode == 700
    files.delete_files(["~/r/moved/digits"])
    files.delete_directories(["~/r"])
    with pytest.raises(SandboxException):
        files.get_file_info(["~/r"])


def test_a_streamed_upload_and_download_of_several_mebibytes(sandbox: SandboxSync) -> None:
    data = bytes(range(256)) * (24 << 12)  # 24 MiB
    sandbox.files.write_file("~/big/blob", io.BytesIO(data))
    streamed = b"".join(sandbox.files.read_bytes_stream("~/big/blob"))
    assert streamed == data


def test_metrics_are_the_sandboxs_own(sandbox: SandboxSync) -> None:
    found = sandbox.get_metrics()
    assert found.cpu_count >= 1 and 0 <= found.cpu_used_percentage <= 100
    assert 0 < found.memory_used_in_mib < found.memory_total_in_mib


def test_download_status_codes_and_headers(execd: httpx.Client) -> None:
    files = [("metadata", ("metadata", json.dumps({"path": "~/dl/ten"}), "application/json"))]
    files.append(("file", ("ten", b"0123456789", "application/octet-stream")))
    assert execd.post("/files/upload", files=files).status_code == 200
    whole = execd.get("/files/download", params={"path": "~/dl/ten"})
    assert whole.status_code == 200 and whole.content == b"0123456789"
    assert whole.headers["content-length"] == "10"
    head = execd.head("/files/download", params={"path": "~/dl/ten"})
    assert head.status_code == 200 and head.headers["content-length"] == "10"
    assert whole.headers["content-disposition"].startswith('attachment; filename="ten"')
    part = execd.get("/files/download", params={"path": "~/dl/ten"}, headers={"Range": "bytes=3-"})
    assert part.status_code == 206 and part.content == b"3456789"
    assert part.headers["content-range"] == "bytes 3-9/10"
    for bad in ("bytes=10-", "bytes=9-2"):
        refused = execd.get("/files/download", params={"path": "~/dl/ten"}, headers={"Range": bad})
        assert refused.status_code == 416 and refused.json()["code"] == "UNKNOWN"
    both = execd.get(
        "/files/download", params={"path": "~/dl/ten", "offset": 1}, headers={"Range": "bytes=0-1"}
    )
    assert both.status_code == 400
    odd = {"path": '~/dl/new\nline"q ü'}
    files = [("metadata", ("metadata", json.dumps(odd), "application/json"))]
    assert execd.post("/files/upload", files=[*files, ("file", ("x", b"odd"))]).status_code == 200
    named = execd.get("/files/download", params=odd)
    assert named.content == b"odd"
    disposition = named.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=\"new_line_q _\"; filename*=UTF-8''new%0A")
    lines = execd.get("/files/download", params={"path": "~/dl/ten", "offset": 1, "limit": 1})
    assert lines.status_code == 200 and lines.headers["content-type"].startswith("text/plain")


def test_errors_have_execds_codes(execd: httpx.Client) -> None:
    expect = [
        (execd.get("/files/info", params={"path": "~/nothing"}), 404, "FILE_NOT_FOUND"),
        (execd.get("/files/download"), 400, "MISSING_QUERY"),
        (execd.get("/files/search"), 400, "MISSING_QUERY"),
        (execd.get("/directories/list", params={"path": "~", "depth": "x"}), 400, None),
        (execd.post("/files/replace", json={"~/x": {"old": "", "new": "y"}}), 400, None),
        (execd.post("/files/mv", json=[{"src": "~/none", "dest": "~/b"}]), 404, "FILE_NOT_FOUND"),
        (execd.post("/files/upload", files=[("file", ("f", b"x"))]), 400, "INVALID_FILE"),
        (
            execd.post("/files/upload", content=b"", headers={"content-type": "text/plain"}),
            400,
            "INVALID_FILE",
        ),
        (
            execd.post(
                "/files/upload",
                files=[("metadata", ("metadata", b"not json")), ("file", ("f", b"x"))],
            ),
            400,
            "INVALID_FILE_METADATA",
        ),
    ]
    for response, status, code in expect:
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"code", "message"}
        assert code is None or body["code"] == code, body
        assert "Traceback" not in body["message"]
    assert execd.get("/files/info").json() == {}
    done = execd.request("DELETE", "/directories", params={"path": "~/never"})
    assert done.status_code == 200 and done.content == b""  # bodiless success


def test_a_batch_upload_of_pairs(execd: httpx.Client) -> None:
    parts = []
    for i in range(3):
        metadata = {"path": f"~/batch/{i}.txt", "owner": None, "group": None, "mode": 600}
        parts.append(("metadata", ("metadata", json.dumps(metadata), "application/json")))
        parts.append(("file", (f"{i}.txt", f"file {i}".encode(), "text/plain")))
    assert execd.post("/files/upload", files=parts).status_code == 200
    found = execd.get("/files/info", params={"path": [f"~/batch/{i}.txt" for i in range(3)]})
    assert [(f["size"], f["mode"]) for f in found.json().values()] == [(6, 600)] * 3


def test_metrics_watch_sends_bare_json_frames(execd: httpx.Client) -> None:
    with execd.stream("GET", "/metrics/watch") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = response.iter_lines()
        first = json.loads(next(frames))
    assert set(first) == {"cpu_count", "cpu_used_pct", "mem_total_mib", "mem_used_mib", "timestamp"}


def test_metrics_watch_ends_with_an_error_frame_when_its_sandbox_ends(osb_server: Server) -> None:
    with opened(osb_server) as other, other.client.stream("GET", "/metrics/watch") as response:
        frames = response.iter_lines()
        assert "cpu_used_pct" in json.loads(next(frames))
        with lifecycle(osb_server) as api:
            assert api.delete(f"/sandboxes/{other.sandbox_id}").status_code == 204
        last = [json.loads(line) for line in frames if line]
    assert 1 <= len(last) <= 2, last  # one sample may have been under way
    assert set(last[-1]) == {"error"} and "ended" in last[-1]["error"]


def vm(pid: int, field: str) -> int:
    """A VmXXX figure of /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def test_the_server_streams_a_chunked_upload_without_holding_it(
    osb_server: Server, execd: httpx.Client
) -> None:
    size, chunk, boundary = 128 << 20, bytes(range(256)) * 256, "b0undary"

    def body() -> Iterator[bytes]:
        yield f"--{boundary}\r\n".encode()
        yield b'Content-Disposition: form-data; name="metadata"; filename="metadata"\r\n\r\n'
        yield b'{"path": "~/streamed"}\r\n'
        yield f"--{boundary}\r\n".encode()
        yield b"Content-Disposition: form-data; name=file; filename=s\r\n\r\n"
        for _ in range(size // len(chunk)):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    pid = osb_server.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak RSS starts again from now
    before = vm(pid, "VmRSS")
    uploaded = execd.post(
        "/files/upload",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        timeout=120,
    )
    assert uploaded.status_code == 200, uploaded.text
    assert vm(pid, "VmHWM") - before < 32 << 20  # of 128 MiB that passed through it
    found = execd.get("/files/info", params={"path": "~/streamed"}).json()
    assert found["~/streamed"]["size"] == size
