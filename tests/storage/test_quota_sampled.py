"""The sampled thread quota (``--sampled-quota``: what a server that is not root has), on
a server of its own with 1 MiB."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.harness import Server, start_server, stop_server
from tests.harness import run_in_thread as run

QUOTA = 1 << 20

FILL_FOREVER = """
import itertools, time
for i in itertools.count():
    with open(f"/home/baponi/fill{i}", "wb") as f:
        f.write(b"x" * 200_000)
    time.sleep(0.02)
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("quota") / "home", "--thread-quota", "1M", "--sampled-quota"
    )
    yield server
    stop_server(server)


@pytest.fixture
def api(small: Server) -> Iterator[httpx.Client]:
    with small.client() as client:
        yield client


def home_bytes(server: Server, thread: str) -> int:
    (home,) = (server.home / "threads").glob(f"*/{thread}")
    return sum(p.stat().st_size for p in home.rglob("*") if p.is_file())


def test_writing_past_the_quota_stops_the_run(small: Server, api: httpx.Client) -> None:
    result = run(api, FILL_FOREVER, "fill")
    assert result["error"] == "disk_quota_exceeded"
    assert result["success"] is False
    record = api.get(f"/v1/executions/{result['trace_id']}").json()
    assert record["status"] == "failed"
    # Stopped within a few samples of crossing the line, not at the 30 s timeout.
    assert QUOTA < home_bytes(small, "fill") < 8 * QUOTA


def test_a_thread_over_quota_can_still_clean_up(small: Server, api: httpx.Client) -> None:
    assert run(api, FILL_FOREVER, "tidy")["error"] == "disk_quota_exceeded"
    cleanup = "import os\nfor f in os.listdir('.'):\n    os.unlink(f)\nprint('ok')"
    result = run(api, cleanup, "tidy")
    assert result["stdout"] == "ok\n" and result["error"] is None
    assert home_bytes(small, "tidy") == 0
    # Room again: writing under the quota succeeds.
    result = run(api, "open('small', 'wb').write(b'x' * 100_000)", "tidy")
    assert result["success"] is True


def test_growing_a_home_already_over_quota_is_stopped(api: httpx.Client) -> None:
    assert run(api, FILL_FOREVER, "over")["error"] == "disk_quota_exceeded"
    result = run(api, "print('reading is fine')", "over")
    assert result["success"] is True
    assert run(api, FILL_FOREVER, "over")["error"] == "disk_quota_exceeded"


def test_other_threads_are_not_affected(api: httpx.Client) -> None:
    assert run(api, FILL_FOREVER, "greedy")["error"] == "disk_quota_exceeded"
    result = run(api, "open('a', 'wb').write(b'x' * 500_000)\nprint('fine')", "modest")
    assert result["stdout"] == "fine\n"


def test_nesting_too_deep_to_account_for_is_stopped(api: httpx.Client) -> None:
    code = (
        "import os, time\nfor _ in range(600):\n    os.mkdir('d')\n    os.chdir('d')\n"
        "time.sleep(5)\nprint('not reached')"
    )
    result = run(api, code, "deep")
    assert result["error"] == "disk_quota_exceeded"
    assert "not reached" not in str(result["stdout"])


def test_executions_without_a_thread_have_no_thread_quota(api: httpx.Client) -> None:
    code = "open('/home/baponi/big', 'wb').write(b'x' * 3_000_000)\nprint('ok')"
    response = api.post("/v1/sandbox/execute", json={"code": code})
    assert response.json()["stdout"] == "ok\n"  # an ephemeral home is a sized tmpfs instead


def test_uploads_beyond_the_quota_are_refused(small: Server, api: httpx.Client) -> None:
    body = {"source": "thread", "id": "uploads", "path": "a.bin", "content_length": QUOTA + 1}
    response = api.post("/v1/files/upload_url", json=body)
    assert response.status_code == 429
    assert response.json() == {
        "error": "rate_limited",
        "message": f"thread disk quota exceeded (0 of {QUOTA} bytes used, "
        f"upload of {QUOTA + 1} bytes)",
    }
    # Within the quota it is granted; two grants that together exceed it are both handed
    # out, but the second upload is refused when it starts, and leaves nothing behind.
    half = {**body, "content_length": 700_000}
    first = api.post("/v1/files/upload_url", json=half).json()
    second = api.post("/v1/files/upload_url", json={**half, "path": "b.bin"}).json()
    assert httpx.put(first["url"], content=b"x" * 700_000).status_code == 200
    refused = httpx.put(second["url"], content=b"y" * 700_000)
    assert refused.status_code == 429, refused.text
    listed = api.post("/v1/files/list", json={"source": "thread", "id": "uploads"}).json()
    assert [f["path"] for f in listed["files"]] == ["a.bin"]
