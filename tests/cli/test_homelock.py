"""One server per home: a second `baponi serve` or `baponi-mcp` on it is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import BAPONI, free_port, start_server, stop_server

pytestmark = pytest.mark.slow  # servers and CLI processes started one after another

BAPONI_MCP = [sys.executable, "-m", "baponi_cli.mcp"]


def second(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def test_a_second_process_on_a_home_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home)
    try:
        pid = str(server.process.pid)
        serve = second([*BAPONI, "serve", "--home", str(home), "--port", str(free_port())])
        assert serve.returncode == 1
        assert f"is in use by a running Baponi server (pid {pid})" in serve.stderr
        mcp = second([*BAPONI_MCP, "--home", str(home)])
        assert mcp.returncode == 1
        assert f"(pid {pid})" in mcp.stderr and mcp.stdout == ""
        # The first server is untouched: it still runs code.
        assert (
            server.client().post("/v1/sandbox/execute", json={"code": "print(1)"}).json()["stdout"]
            == "1\n"
        )
        # Operator commands do not need the lock.
        assert second([*BAPONI, "keys", "list", "--home", str(home)]).returncode == 0
    finally:
        stop_server(server)
    # Once it has stopped (or died: the kernel drops the lock), the home is free again.
    again = start_server(home)
    stop_server(again)
