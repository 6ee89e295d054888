"""Raw HTTP clients of the OpenSandbox APIs on a test server: its lifecycle API with a
key, and one sandbox's execd reached through the endpoint the lifecycle API gives."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tests.harness import Server

RUNTIME = "default"  # the test image, imported into the shared runtimes (tests/harness.py)


def lifecycle(server: Server, key: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=f"{server.url}/opensandbox/v1",
        headers={"OPEN-SANDBOX-API-KEY": key or server.key},
        timeout=30,
    )


@dataclass
class Execd:
    client: httpx.Client
    sandbox_id: str

    def events(self, body: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
        """The raw lines of ``POST /command`` and the events they hold."""
        with self.client.stream("POST", "/command", json=body) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = list(response.iter_lines())
        return lines, [json.loads(line) for line in lines if line]

    def sh(self, command: str) -> tuple[int, str, str]:
        """Run ``command`` in the foreground: its exit code, stdout and stderr."""
        _, events = self.events({"command": command})
        out = "".join(e["text"] for e in events if e["type"] == "stdout")
        err = "".join(e["text"] for e in events if e["type"] == "stderr")
        end = events[-1]
        code = 0 if end["type"] == "execution_complete" else int(end["error"]["evalue"])
        return code, out, err


@contextlib.contextmanager
def opened(server: Server, key: str | None = None, **create: Any) -> Iterator[Execd]:
    """A new sandbox of ``key``'s organisation and its execd; deleted at the end."""
    with lifecycle(server, key) as api:
        created = api.post("/sandboxes", json={"image": {"uri": RUNTIME}, **create})
        assert created.status_code == 202, created.text
        sandbox_id = created.json()["id"]
        try:
            endpoint = api.get(f"/sandboxes/{sandbox_id}/endpoints/44772").json()
            with httpx.Client(
                base_url=f"http://{endpoint['endpoint']}", headers=endpoint["headers"], timeout=60
            ) as client:
                yield Execd(client, sandbox_id)
        finally:
            api.delete(f"/sandboxes/{sandbox_id}")
