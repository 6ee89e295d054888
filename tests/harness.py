"""What tests (and benchmarks) share: real `baponi serve` processes on loopback, the
operator CLI, and small helpers for waiting, naming and asserting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

BAPONI = [sys.executable, "-m", "baponi_cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(home: Path, *args: str) -> str:
    """Run the operator CLI against ``home``; return its stdout."""
    done = subprocess.run(
        [*BAPONI, *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


@dataclass
class Server:
    home: Path
    url: str
    key: str
    process: subprocess.Popen[bytes]

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key or self.key}"},
            timeout=60,
        )

    def sdk(self, key: str | None = None):  # type: ignore[no-untyped-def]
        from baponi import Baponi

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # plain http on loopback
            return Baponi(api_key=key or self.key, base_url=self.url, max_retries=0)

    def new_key(self, *args: str) -> str:
        return cli(self.home, "keys", "create", *args)

    @property
    def log(self) -> str:
        return Path(f"{self.home}.log").read_text(errors="replace")


def start_server(home: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    """``baponi serve`` on a free loopback port with extra ``args``; its log goes to
    ``<home>.log`` (a pipe nobody reads would stall a chatty server)."""
    port = free_port()
    environ = {**os.environ, "BAPONI_TEST_SECRET": "server-secret-do-not-leak", **(env or {})}
    log = open(f"{home}.log", "ab")  # noqa: SIM115 (the child keeps it)
    process = subprocess.Popen(
        [*BAPONI, "serve", "--home", str(home), "--port", str(port), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=environ,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {Path(f'{home}.log').read_text()}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("server did not become ready")
    return Server(
        home=home, url=url, key=cli(home, "keys", "create", "--name", "tests"), process=process
    )


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def marker_processes(marker: str) -> list[bytes]:
    """Command lines (argv joined by NUL) of host processes that mention ``marker``
    (sandboxed processes are visible on the host, so this proves whether they live)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # the process ended while we looked
            continue
        if marker.encode() in cmdline:
            found.append(cmdline)
    return found


async def wait_until(predicate: Any, within: float) -> bool:
    """Poll ``predicate`` until it holds (True) or ``within`` seconds pass (False)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await anyio.sleep(0.02)
    return True
