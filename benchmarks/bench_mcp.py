"""Round-trip time of an MCP ``tools/call`` against REST, in one run on one machine.

Each side runs ``print(1)`` in a fresh sandbox (the cold path) and is timed by the client,
one call at a time:

* **REST**: ``POST /v1/sandbox/execute`` (inline) of a real ``baponi serve`` on loopback,
  over one keep-alive ``httpx.AsyncClient``;
* **MCP HTTP 2026**: ``tools/call sandbox_execute`` at ``/mcp`` of the same server with the
  official SDK's client in its default mode (protocol 2026-07-28: one stateless POST per
  call, answered as SSE);
* **MCP HTTP 2025**: the same, ``mode="legacy"`` (protocol 2025-11-25 after an
  ``initialize``; stateless on the server);
* **MCP stdio**: ``tools/call`` to a ``baponi-mcp`` process spawned by the SDK's client,
  on a home of its own (so its start never touches the server's executions).

Sides are interleaved, in an order that rotates every iteration, to cancel drift.
Connections are opened (and the stdio process started) before the first measured call.

Run from the repository root::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_mcp.py --runs 200

It asserts no timings but exits non-zero if any call answers something other than
``1\\n``, so the numbers never silently measure failures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from benchmarks.stats import percentile
from tests.harness import start_server, stop_server

BAPONI_MCP = str(Path(sys.executable).with_name("baponi-mcp"))
CODE = "print(1)"
EXPECTED = "1\n"

Call = Callable[[], Awaitable[str]]


class WrongOutput(Exception):
    """A call did not answer what it should have."""


def rest(client: httpx.AsyncClient) -> Call:
    async def run() -> str:
        response = await client.post("/v1/sandbox/execute", json={"code": CODE})
        if response.status_code != 200:
            raise WrongOutput(f"REST: HTTP {response.status_code}: {response.text}")
        return str(response.json()["stdout"])

    return run


def mcp(client: Client) -> Call:
    async def run() -> str:
        result = await client.call_tool("sandbox_execute", {"code": CODE})
        if result.is_error or result.structured_content is None:
            raise WrongOutput(f"MCP: {result.content}")
        return str(result.structured_content["stdout"])

    return run


async def open_sides(
    stack: AsyncExitStack, url: str, key: str, stdio_home: Path
) -> dict[str, Call]:
    headers = {"Authorization": f"Bearer {key}"}
    api = await stack.enter_async_context(httpx.AsyncClient(base_url=url, headers=headers))
    sides = {"REST (inline)": rest(api)}
    for label, mode in (("MCP HTTP 2026", "auto"), ("MCP HTTP 2025", "legacy")):
        http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=60))
        transport = streamable_http_client(f"{url}/mcp", http_client=http)
        sides[label] = mcp(await stack.enter_async_context(Client(transport, mode=mode)))
    stdio = StdioServerParameters(command=BAPONI_MCP, args=["--home", str(stdio_home)])
    sides["MCP stdio"] = mcp(await stack.enter_async_context(Client(stdio)))
    return sides


async def measure(sides: dict[str, Call], runs: int, warmup: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {label: [] for label in sides}
    order = list(sides)
    for i in range(warmup + runs):
        shift = i % len(order)
        for label in order[shift:] + order[:shift]:
            start = time.perf_counter()
            out = await sides[label]()
            elapsed = time.perf_counter() - start
            if out != EXPECTED:
                raise WrongOutput(f"{label}: stdout {out!r}")
            if i >= warmup:
                samples[label].append(elapsed * 1000)
    return samples


def summary(samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    base = percentile(samples["REST (inline)"], 50)
    rows = []
    for label, values in samples.items():
        p50 = percentile(values, 50)
        rows.append(
            {
                "side": label,
                "p50_ms": p50,
                "p90_ms": percentile(values, 90),
                "p99_ms": percentile(values, 99),
                "mean_ms": sum(values) / len(values),
                "vs_rest_p50_ms": p50 - base,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| side | p50 | p90 | p99 | mean | p50 vs REST |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['side']} | {r['p50_ms']:.1f} ms | {r['p90_ms']:.1f} ms | {r['p99_ms']:.1f} ms "
            f"| {r['mean_ms']:.1f} ms | {r['vs_rest_p50_ms']:+.1f} ms |"
        )
    return "\n".join(lines)


async def run(runs: int, warmup: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="baponi-bench-mcp-") as tmp:
        server = start_server(Path(tmp) / "server")
        try:
            async with AsyncExitStack() as stack:
                sides = await open_sides(stack, server.url, server.key, Path(tmp) / "stdio")
                print(f"measuring {', '.join(sides)} ...", file=sys.stderr, flush=True)
                return summary(await measure(sides, runs, warmup))
        finally:
            stop_server(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Round-trip time of an MCP tools/call of print(1) over stdio and HTTP, "
        "against REST inline execute of the same code. Starts its own server; run from the "
        "repo root with PYTHONPATH=.",
        epilog="Exits non-zero if any call's output is wrong.",
    )
    parser.add_argument("--runs", type=int, default=200, help="measured calls per side")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured calls first")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    try:
        rows = anyio.run(run, args.runs, args.warmup)
    except WrongOutput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(table(rows))
    if args.json:
        payload = {"runs": args.runs, "warmup": args.warmup, "results": rows}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
