"""A full disk: execute, stream and upload answer a clear 503 (``storage: no free space``)
and the server stays healthy, serving again once space is freed. A real server whose home
is a small tmpfs mounted for the test (root only), filled up by the test."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import (
    Server,
    assert_error,
    files_call,
    start_server,
    stop_server,
    tmpfs,
    unique,
    wait_until,
)

pytestmark = [
    pytest.mark.slow,  # a server of its own
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]

NO_SPACE = "storage: no free space"
NDJSON = "application/x-ndjson"
MiB = 1 << 20


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs, unmounted afterwards."""
    with tmpfs(tmp_path / "disk", "size=48m") as mount:
        yield mount


def fill(path: Path) -> None:
    """Write ``path`` until its filesystem has no byte left."""
    chunk = b"\0" * MiB
    with path.open("wb", buffering=0) as out:
        while True:
            try:
                out.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        for size in (64 << 10, 4 << 10):  # what a whole chunk no longer fitted
            while True:
                try:
                    out.write(chunk[:size])
                except OSError:
                    break


def upload_url(client: httpx.Client, thread: str, size: int) -> httpx.Response:
    return files_call(
        client, "upload_url", source="thread", id=thread, path="data.bin", content_length=size
    )


def assert_no_space(response: httpx.Response) -> None:
    assert_error(response, 503, "service_unavailable", NO_SPACE)
    assert response.headers["Retry-After"] == "30"


def test_a_full_disk_is_a_503_and_the_server_serves_again_once_freed(small_disk: Path) -> None:
    server: Server = start_server(small_disk / "home")
    thread = unique("disk")
    try:
        with server.client() as client:
            made = client.post(
                "/v1/sandbox/execute", json={"code": "print('made')", "thread_id": thread}
            )
            assert made.status_code == 200, made.text
            granted = upload_url(client, thread, MiB)
            assert granted.status_code == 200, granted.text
            early_url = granted.json()["url"]

            filler = small_disk / "filler"
            fill(filler)
            ready = client.get("/ready")
            assert_error(ready, 503, "service_unavailable", f"not ready ({NO_SPACE})")

            assert_no_space(client.post("/v1/sandbox/execute", json={"code": "print(1)"}))
            streamed = client.post(
                "/v1/sandbox/execute", json={"code": "print(1)"}, headers={"Accept": NDJSON}
            )
            assert_no_space(streamed)  # a JSON error, not a stream
            assert_no_space(upload_url(client, thread, MiB))
            assert_no_space(httpx.put(early_url, content=b"x" * MiB, timeout=30))
            assert client.get("/health").json() == {"status": "ok"}

            # A write that finds the disk full half-way: nothing of it is left.
            filler.unlink()
            spare = small_disk / "spare"
            spare.write_bytes(b"\0" * (256 << 10))
            fill(filler)
            spare.unlink()
            granted = upload_url(client, thread, 4 * MiB)
            assert granted.status_code == 200, granted.text
            cut = httpx.put(granted.json()["url"], content=b"y" * (4 * MiB), timeout=30)
            assert_no_space(cut)
            listed = files_call(client, "list", source="thread", id=thread)
            assert "data.bin" not in [f["name"] for f in listed.json()["files"]], listed.text

            filler.unlink()
            wait_until(lambda: client.get("/ready").status_code == 200, 10, "ready again")
            again = client.post(
                "/v1/sandbox/execute", json={"code": "print('again')", "thread_id": thread}
            )
            assert again.status_code == 200 and again.json()["stdout"] == "again\n", again.text
            stored = httpx.put(early_url, content=b"z" * MiB, timeout=30)
            assert stored.status_code == 200, stored.text
        assert server.process.poll() is None
        assert "Traceback" not in server.log
    finally:
        stop_server(server)
