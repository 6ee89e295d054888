"""What the kernel-kept thread quota costs: a home on a filesystem of its own versus the
sampled home of ``--sampled-quota``, in one run on one machine.

Two ``baponi serve`` on loopback, one of each kind, get the same requests, interleaved
to cancel drift:

* **same thread**: ``print(1)`` with one ``thread_id`` again and again (the home stays
  mounted between runs: what an agent's conversation does);
* **new thread**: ``print(1)`` with a fresh ``thread_id`` each time (the first use of a
  home: its image is made, mounted and, after the run, left mounted until idle);
* **upload**: a 64 KiB signed upload into the same thread, URL and transfer.

Run from the repository root (as root: otherwise both servers sample)::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_quota.py --runs 100

It asserts nothing, but exits non-zero if a run failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from benchmarks.stats import percentile
from tests.harness import Server, start_server, stop_server

KINDS = {"kernel": (), "sampled": ("--sampled-quota",)}
counter = itertools.count()


def execute(api: httpx.Client, thread: str) -> None:
    body = api.post("/v1/sandbox/execute", json={"code": "print(1)", "thread_id": thread}).json()
    if body.get("stdout") != "1\n":
        raise SystemExit(f"a run failed: {body}")


def upload(api: httpx.Client, thread: str) -> None:
    request = {
        "source": "thread",
        "id": thread,
        "path": f"u{next(counter)}",
        "content_length": 65536,
    }
    signed = api.post("/v1/files/upload_url", json=request).json()
    if httpx.put(signed["url"], content=b"u" * 65536).status_code != 200:
        raise SystemExit("an upload failed")


CASES: dict[str, Callable[[httpx.Client], None]] = {
    "same thread": lambda api: execute(api, "same"),
    "new thread": lambda api: execute(api, f"new-{next(counter)}"),
    "upload": lambda api: upload(api, "same"),
}


def timed(action: Callable[[httpx.Client], None], api: httpx.Client) -> float:
    started = time.perf_counter()
    action(api)
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="measured runs per case and kind")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured runs first")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        servers: dict[str, Server] = {
            kind: start_server(Path(tmp) / kind, *flags) for kind, flags in KINDS.items()
        }
        try:
            results = measure(servers, args.runs, args.warmup)
        finally:
            for server in servers.values():
                stop_server(server)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def measure(
    servers: dict[str, Server], runs: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    clients = {kind: server.client() for kind, server in servers.items()}
    results: dict[str, dict[str, list[float]]] = {case: {k: [] for k in servers} for case in CASES}
    try:
        for case, action in CASES.items():
            for n in range(warmup + runs):
                for kind, api in clients.items():
                    took = timed(action, api)
                    if n >= warmup:
                        results[case][kind].append(took)
    finally:
        for api in clients.values():
            api.close()
    return results


def report(results: dict[str, dict[str, list[float]]]) -> None:
    print(
        f"{'case':<12} {'kernel p50':>11} {'p99':>8} {'sampled p50':>12} {'p99':>8} {'diff p50':>9}"
    )
    for case, kinds in results.items():
        k50, k99 = percentile(kinds["kernel"], 50), percentile(kinds["kernel"], 99)
        s50, s99 = percentile(kinds["sampled"], 50), percentile(kinds["sampled"], 99)
        kernel, sampled = f"{k50:>9.1f}ms {k99:>6.1f}ms", f"{s50:>10.1f}ms {s99:>6.1f}ms"
        print(f"{case:<12} {kernel} {sampled} {k50 - s50:>+7.1f}ms")


if __name__ == "__main__":
    sys.exit(main())
