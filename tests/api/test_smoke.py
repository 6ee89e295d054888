from __future__ import annotations

import httpx

from tests.harness import Server


def test_health_and_inline_execute(server: Server, api: httpx.Client) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    body = api.post("/v1/sandbox/execute", json={"code": "print(6*7)"}).json()
    assert body["stdout"] == "42\n"
    assert body["success"] is True
    assert body["trace_id"].startswith("trc_")
