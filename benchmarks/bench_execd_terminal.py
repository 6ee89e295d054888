"""execd's proxy and PTY on a real ``baponi serve``, against the bare tools in the same run:

* a GET through ``/proxy/{port}/`` of ``python3 -m http.server`` inside a sandbox (a relay
  process started per request): p50 and p99, against the same GET from the host to the
  same server run on the host;
* a keystroke's echo through a PTY session's WebSocket (``0x00 x`` in, the terminal's
  ``x`` out): p50 and p99, against the same echo on a pseudo-terminal of the host's own
  with bash on it.

Run from the repository root, as root::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_execd_terminal.py --runs 200
"""

from __future__ import annotations

import argparse
import os
import pty
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from opensandbox.models.execd import RunCommandOpts
from websockets.sync.client import connect

from benchmarks.stats import percentile
from tests.harness import free_port, start_server, stop_server, wait_until
from tests.opensandbox.execd import execd_client, execd_of, sandbox_of

PORT = 8000  # of the sandbox's own loopback


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return samples


def bare_get(runs: int, site: Path) -> list[float]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=site,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
            wait_until(lambda: _answers(client), within=10)
            return timed(lambda: client.get("/hello.txt").raise_for_status(), runs)
    finally:
        server.kill()
        server.wait()


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/hello.txt").status_code == 200
    except httpx.TransportError:
        return False


def bare_echo(runs: int) -> list[float]:
    pid, master = pty.fork()
    if pid == 0:
        os.execvp("bash", ["bash", "--norc", "--noprofile"])
    try:
        os.read(master, 4096)  # its prompt

        def echo() -> None:
            os.write(master, b"x")
            while b"x" not in os.read(master, 4096):
                pass

        return timed(echo, runs)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def report(name: str, samples: list[float], bare: list[float]) -> None:
    p50, p99, b50 = percentile(samples, 50), percentile(samples, 99), percentile(bare, 50)
    print(
        f"{name:<10} p50 {p50 * 1000:.2f} ms  p99 {p99 * 1000:.2f} ms  bare p50 "
        f"{b50 * 1000:.2f} ms  ratio {p50 / b50:.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as site:
        (Path(site) / "hello.txt").write_text("hello\n")
        server = start_server(Path(home) / "home")
        try:
            with sandbox_of(server) as box, execd_client(box) as execd:
                box.commands.run("mkdir -p /tmp/site && echo hello > /tmp/site/hello.txt")
                box.commands.run(
                    f"python3 -m http.server {PORT} --bind 127.0.0.1 --directory /tmp/site",
                    opts=RunCommandOpts(background=True),
                )
                path = f"/proxy/{PORT}/hello.txt"
                wait_until(lambda: execd.get(path).status_code == 200, within=20)
                proxied = timed(lambda: execd.get(path).raise_for_status(), args.runs)
                session_id = execd.post("/pty", json={}).json()["session_id"]
                where, headers = execd_of(box)
                url = f"ws://{where}/pty/{session_id}/ws"
                with connect(url, additional_headers=headers, proxy=None) as ws:
                    ws.recv(timeout=10)  # connected

                    def echo() -> None:
                        ws.send(b"\x00x")
                        while b"x" not in ws.recv(timeout=10):
                            pass

                    typed = timed(echo, args.runs)
        finally:
            stop_server(server)
        report("proxy GET", proxied, bare_get(args.runs, Path(site)))
        report("pty echo", typed, bare_echo(args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
