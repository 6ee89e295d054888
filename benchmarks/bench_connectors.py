"""What injecting connectors costs an execution, in one run on one machine.

One ``baponi serve`` on loopback and three keys, interleaved to cancel drift:

* **none**: a key without connectors (the baseline);
* **variable**: a key bound to a connector of one variable (a password);
* **files**: a key bound to a connector of four 1 MiB files (the most one may hold),
  which are decrypted and written into the sandbox for every execution.

Each run is ``print(1)`` inline. Run from the repository root::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_connectors.py --runs 100

It asserts nothing, but exits non-zero if a run failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.stats import percentile
from tests.harness import cli, start_server, stop_server

FILES = 4
FILE_BYTES = 1 << 20


def keys(home: Path, tmp: Path) -> dict[str, str]:
    """The three keys, their connectors made first."""
    cli(home, "connectors", "create", "variable", "--env", "PGPASSWORD=p4ssw0rd")
    options = []
    for n in range(FILES):
        path = tmp / f"file{n}"
        path.write_bytes(bytes([n]) * FILE_BYTES)
        options += ["--file", f"f{n}=@{path}"]
    cli(home, "connectors", "create", "files", *options)
    return {
        "none": cli(home, "keys", "create"),
        "variable": cli(home, "keys", "create", "--connector", "variable"),
        "files": cli(home, "keys", "create", "--connector", "files"),
    }


def timed(api: httpx.Client) -> float:
    started = time.perf_counter()
    body = api.post("/v1/sandbox/execute", json={"code": "print(1)"}).json()
    took = (time.perf_counter() - started) * 1000
    if body.get("stdout") != "1\n":
        raise SystemExit(f"a run failed: {body}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="measured runs per key")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured runs first")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "home")
        try:
            results = measure(server.url, keys(server.home, Path(tmp)), args.runs, args.warmup)
        finally:
            stop_server(server)
    print(f"{'key':<9} {'p50':>8} {'p99':>8} {'p50 - none':>11}")
    base = percentile(results["none"], 50)
    for kind, times in results.items():
        p50, p99 = percentile(times, 50), percentile(times, 99)
        print(f"{kind:<9} {p50:>6.1f}ms {p99:>6.1f}ms {p50 - base:>+9.1f}ms")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def measure(url: str, keys: dict[str, str], runs: int, warmup: int) -> dict[str, list[float]]:
    clients = {
        kind: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        for kind, key in keys.items()
    }
    results: dict[str, list[float]] = {kind: [] for kind in keys}
    try:
        for n in range(warmup + runs):
            for kind, api in clients.items():
                took = timed(api)
                if n >= warmup:
                    results[kind].append(took)
    finally:
        for api in clients.values():
            api.close()
    return results


if __name__ == "__main__":
    sys.exit(main())
