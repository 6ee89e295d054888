"""The cold path of two source trees, measured side by side: a change's cost.

On a shared machine the API latency of ``bench_latency.py`` drifts by more from one run
to the next than a small change costs. This starts one ``baponi serve`` from each tree
(``--before`` and ``--after``, each run with its own tree first on ``PYTHONPATH``) and
alternates requests between them, swapping which goes first every round, so drift hits
both alike. Each request is ``echo 1`` in bash (or, with ``--language``, the same in
python or node), without a thread and, with
``--thread``, in one thread home.

Run from the repository root, e.g. against the last commit::

    git archive HEAD | tar -x -C /tmp/before
    PYTHONPATH=. .venv/bin/python benchmarks/bench_side_by_side.py \\
        --before /tmp/before --after . --runs 300 --thread

It asserts nothing, but exits non-zero if a request printed the wrong output.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.stats import percentile
from tests.harness import Server, start_server, stop_server


def timed(client: httpx.Client, body: dict[str, Any]) -> float:
    start = time.perf_counter()
    response = client.post("/v1/sandbox/execute", json=body, timeout=60)
    took = (time.perf_counter() - start) * 1000
    if response.status_code != 200 or response.json().get("stdout") != "1\n":
        raise SystemExit(f"wrong answer: {response.status_code} {response.text[:300]}")
    return took


def compare(servers: dict[str, Server], body: dict[str, Any], runs: int, warmup: int) -> None:
    clients = {name: server.client() for name, server in servers.items()}
    samples: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for turn in range(warmup + runs):
            order = list(clients.items())
            for name, client in order if turn % 2 else reversed(order):
                took = timed(client, body)
                if turn >= warmup:
                    samples[name].append(took)
    finally:
        for client in clients.values():
            client.close()
    for name, taken in samples.items():
        print(
            f"| {'thread home' if 'thread_id' in body else 'no thread'} | {name} "
            f"| {percentile(taken, 50):.2f} ms | {percentile(taken, 90):.2f} ms |"
        )


PROGRAMS = {"bash": "echo 1", "python": "print(1)", "node": "console.log(1)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the tree before the change")
    parser.add_argument("--after", type=Path, required=True, help="the tree after it")
    parser.add_argument("--runs", type=int, default=300, help="measured pairs (default 300)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured pairs (default 20)")
    parser.add_argument("--thread", action="store_true", help="also measure in a thread home")
    parser.add_argument(
        "--language", choices=sorted(PROGRAMS), default="bash", help="what prints 1 (bash)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    servers: dict[str, Server] = {}
    with tempfile.TemporaryDirectory(prefix="baponi-bench-") as homes:
        try:
            for name, tree in trees.items():
                home = Path(homes) / name
                servers[name] = start_server(home, env={"PYTHONPATH": str(tree)})
            print("| case | tree | p50 | p90 |\n|---|---|---:|---:|")
            bodies = [{"code": PROGRAMS[args.language], "language": args.language}]
            if args.thread:
                bodies.append({**bodies[0], "thread_id": "bench-side-by-side"})
            for body in bodies:
                compare(servers, body, args.runs, args.warmup)
        finally:
            for server in servers.values():
                stop_server(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
