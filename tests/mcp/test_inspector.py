"""A real external MCP client, the MCP Inspector CLI (TypeScript SDK), listing and calling
the tools of ``baponi-mcp`` over stdio and of ``baponi serve`` over HTTP.

Its exit codes: 0 success, 5 a tool returned isError, 3 authentication required; --strict
on tools/list exits 6 when a tool's schema has portability errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness import BAPONI_MCP, ROOT, Server

INSPECTOR = ROOT / "node_modules" / ".bin" / "mcp-inspector"

pytestmark = [
    pytest.mark.skipif(
        not INSPECTOR.exists(),
        reason="MCP Inspector not installed (npm ci, as scripts/setup.sh does)",
    ),
    pytest.mark.slow,  # a node process for every call
]


def inspector(tmp_path: Path, *args: str) -> tuple[int, Any, str]:
    """Run the Inspector CLI (HOME in ``tmp_path``: it writes ~/.mcp-inspector); return its
    exit code, its stdout as JSON (or text), its stderr."""
    home = tmp_path / "inspector-home"
    home.mkdir(exist_ok=True)
    done = subprocess.run(
        [str(INSPECTOR), "--cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HOME": str(home), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
        cwd=tmp_path,
    )
    try:
        out: Any = json.loads(done.stdout)
    except ValueError:
        out = done.stdout
    return done.returncode, out, done.stderr


def stdio(tmp_path: Path) -> list[str]:
    """The stdio target: baponi-mcp with its home given through the environment."""
    runtimes = os.environ["BAPONI_RUNTIMES"]  # the session's (conftest)
    return [
        BAPONI_MCP,
        "-e",
        f"BAPONI_HOME={tmp_path / 'baponi'}",
        "-e",
        f"BAPONI_RUNTIMES={runtimes}",
    ]


def test_stdio_tools_list_is_portable(tmp_path: Path) -> None:
    code, out, err = inspector(tmp_path, *stdio(tmp_path), "--method", "tools/list", "--strict")
    assert code == 0, err
    tools = {tool["name"]: tool for tool in out["tools"]}
    assert set(tools) == {"sandbox_execute", "files_download"}
    assert tools["sandbox_execute"]["inputSchema"]["required"] == ["code"]
    assert "outputSchema" in tools["files_download"]


def test_stdio_tools_call(tmp_path: Path) -> None:
    code, out, err = inspector(
        tmp_path,
        *stdio(tmp_path),
        "--method", "tools/call",
        "--tool-name", "sandbox_execute",
        "--tool-arg", "code=print(6*7)",
        "--tool-arg", "thread_id=insp",
        "--tool-arg", 'env_vars={"WHO": "inspector"}',
    )  # fmt: skip
    assert code == 0, err
    assert out["isError"] is False
    assert out["content"] == [{"type": "text", "text": "42\n"}]
    assert out["structuredContent"]["stdout"] == "42\n"

    code, out, err = inspector(
        tmp_path,
        *stdio(tmp_path),
        "--method", "tools/call",
        "--tool-name", "sandbox_execute",
        "--tool-arg", "code=echo $WHO > who.txt; exit 3",
        "--tool-arg", "language=bash",
        "--tool-arg", "thread_id=insp",
        "--tool-arg", 'env_vars={"WHO": "inspector"}',
    )  # fmt: skip
    assert code == 5, err  # the Inspector's "tool returned isError"

    code, out, err = inspector(
        tmp_path,
        *stdio(tmp_path),
        "--method", "tools/call",
        "--tool-name", "files_download",
        "--tool-arg", "id=insp",
        "--tool-arg", "path=who.txt",
    )  # fmt: skip
    assert code == 0, err
    assert out["content"][1] == {"type": "text", "text": "inspector\n"}
    assert out["structuredContent"]["mime_type"] == "text/plain"


def test_http_with_key(tmp_path: Path, server: Server) -> None:
    target = [f"{server.url}/mcp", "--header", f"Authorization: Bearer {server.key}"]
    code, out, err = inspector(tmp_path, *target, "--method", "tools/list")
    assert code == 0, err
    assert {tool["name"] for tool in out["tools"]} == {"sandbox_execute", "files_download"}

    code, out, err = inspector(
        tmp_path,
        *target,
        "--method", "tools/call",
        "--tool-name", "sandbox_execute",
        "--tool-arg", "code=console.log('node ' + (2 + 3))",
        "--tool-arg", "language=node",
    )  # fmt: skip
    assert code == 0, err
    assert out["structuredContent"]["stdout"] == "node 5\n"


def test_http_without_key_needs_auth(tmp_path: Path, server: Server) -> None:
    # No key at all (never a wrong one: the shared server would block this address).
    code, _, err = inspector(
        tmp_path, f"{server.url}/mcp", "--method", "tools/list", "--stored-auth-only"
    )
    assert code == 3, err  # the Inspector's "auth_required", with our 401's message
    assert json.loads(err)["error"]["code"] == "auth_required"
    assert "missing API key" in json.loads(err)["error"]["message"]
