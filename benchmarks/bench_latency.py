"""Cold-path latency: a bare interpreter versus the same code through the HTTP API.

For each language this measures, in one run on one machine:

* **bare**: the interpreter started directly with ``subprocess``, output captured and
  an empty environment (sandboxes get a clean environment too, and host variables
  such as ``NODE_EXTRA_CA_CERTS`` can add tens of milliseconds to node's start-up);
* **api**: the same code sent to ``POST /v1/sandbox/execute`` of a real
  ``baponi serve`` on loopback, over one keep-alive ``httpx.Client``, one request at a
  time. Every request gets a fresh sandbox, so this is the cold path.

Bare and API runs are interleaved to cancel drift. The server is started in a
temporary home and stopped at the end.

Run from the repository root::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_latency.py --runs 100

It asserts nothing, but exits non-zero if any run printed the wrong output, so the
numbers never silently measure failures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.stats import percentile
from tests.harness import start_server, stop_server


@dataclass(frozen=True)
class Case:
    language: str
    argv: tuple[str, ...]
    code: str
    expected: str = "1\n"


CASES = (
    Case("python", ("/usr/bin/python3", "-c"), "print(1)"),
    Case("bash", ("/bin/bash", "-c"), "echo 1"),
    Case("node", ("/usr/bin/node", "-e"), "console.log(1)"),
)


class WrongOutput(Exception):
    """A run did not print what it should have."""


def run_bare(case: Case) -> float:
    start = time.perf_counter()
    done = subprocess.run([*case.argv, case.code], capture_output=True, env={}, timeout=60)
    elapsed = time.perf_counter() - start
    out = done.stdout.decode(errors="replace")
    if done.returncode != 0 or out != case.expected:
        raise WrongOutput(
            f"bare {case.language}: exit {done.returncode}, stdout {out!r}, "
            f"stderr {done.stderr.decode(errors='replace')!r}"
        )
    return elapsed


def run_api(client: httpx.Client, case: Case) -> float:
    start = time.perf_counter()
    response = client.post(
        "/v1/sandbox/execute", json={"code": case.code, "language": case.language}
    )
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise WrongOutput(f"api {case.language}: HTTP {response.status_code}: {response.text}")
    out = response.json().get("stdout")
    if out != case.expected:
        raise WrongOutput(f"api {case.language}: stdout {out!r} in {response.text}")
    return elapsed


def measure(client: httpx.Client, case: Case, runs: int, warmup: int) -> dict[str, object]:
    bare: list[float] = []
    api: list[float] = []
    sides: list[tuple[list[float], Callable[[], float]]] = [
        (bare, lambda: run_bare(case)),
        (api, lambda: run_api(client, case)),
    ]
    for i in range(warmup + runs):
        # Alternate which side goes first so neither always follows the other.
        for samples, run in sides if i % 2 == 0 else reversed(sides):
            elapsed = run()
            if i >= warmup:
                samples.append(elapsed * 1000)
    bare50, api50 = percentile(bare, 50), percentile(api, 50)
    return {
        "language": case.language,
        "runs": runs,
        "bare_p50_ms": bare50,
        "bare_p99_ms": percentile(bare, 99),
        "api_p50_ms": api50,
        "api_p99_ms": percentile(api, 99),
        "overhead_p50_ms": api50 - bare50,
        "ratio_p50": api50 / bare50,
    }


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| language | bare p50 | bare p99 | API p50 | API p99 | overhead (p50) | ratio (p50) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['language']} | {r['bare_p50_ms']:.1f} ms | {r['bare_p99_ms']:.1f} ms "
            f"| {r['api_p50_ms']:.1f} ms | {r['api_p99_ms']:.1f} ms "
            f"| {r['overhead_p50_ms']:.1f} ms | {r['ratio_p50']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Compare a bare interpreter start (subprocess, empty env) with the same code "
            "run end to end through POST /v1/sandbox/execute of a real `baponi serve` "
            "(fresh sandbox per request = cold path). Starts and stops its own server; "
            "run from the repo root with PYTHONPATH=."
        ),
        epilog="Exits non-zero if any run's output is wrong.",
    )
    parser.add_argument(
        "--runs", type=int, default=100, help="measured runs per language and side (default 100)"
    )
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured runs first (default 10)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    parser.add_argument(
        "--languages",
        nargs="+",
        choices=[c.language for c in CASES],
        default=[c.language for c in CASES],
        help="languages to measure (default: all)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")

    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="baponi-bench-") as home:
        server = start_server(Path(home))
        try:
            with server.client() as client:
                for case in CASES:
                    if case.language in args.languages:
                        print(f"measuring {case.language} ...", file=sys.stderr, flush=True)
                        rows.append(measure(client, case, args.runs, args.warmup))
        except WrongOutput as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            stop_server(server)

    print(table(rows))
    if args.json:
        args.json.write_text(
            json.dumps({"runs": args.runs, "warmup": args.warmup, "results": rows}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
