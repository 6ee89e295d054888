"""The pool of prepared sandboxes against the bare interpreters, in one run.

Two real servers on loopback: one with the default pool (``--pool python=2,node=1,bash=1``)
and one without (``--pool 0``, the cold path). Measured, each as a ratio to the bare
interpreter measured in the same run (``subprocess``, empty environment; see
``bench_latency.py``), with the issue's targets beside it:

* inline ``print(1)`` (``echo 1``, ``console.log(1)``): p50 and p99, pooled and cold,
  one request at a time, bare, pooled and cold interleaved (``--gap-ms`` between two
  requests: a pool refills in the background, and back-to-back requests at the rate of
  one set-up each find it empty more often than real traffic does);
* the same in Python with a ``thread_id`` (a thread home: an ext4 image, mounted into
  the waiting sandbox at hand-out);
* streaming: time to the first ``output`` event, pooled;
* throughput: inline Python ``print(1)`` at concurrency 16 for ``--duration`` seconds,
  pooled, against starting ``python3 -c 'print(1)'`` 16 at a time for as long;
* memory: the idle cost of each prepared sandbox (its cgroup's memory usage, and the
  proportional set size of its processes), by language, and of the whole default pool;
* cgroups: what joining a cgroup costs (create, limit, attach a process, remove), which
  a prepared sandbox does before its request, against what stays on the request path
  (reading the OOM counter).

Run from the repository root (root, for the pool)::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_pool.py --runs 100 --duration 30

It exits non-zero if any run printed the wrong output or any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.bench_latency import CASES, Case, WrongOutput, run_bare
from benchmarks.stats import percentile
from tests.harness import COLD, POOLED, Server, cli, start_server, stop_server, unique

TARGETS = {  # p50 at most this times bare
    "python": 0.5,
    "node": 0.5,
    "bash": 1.5,
    "python, thread_id": 0.6,
    "stream first output": 0.5,
}
CONCURRENCY = 16
ORG = "bench"


def bench_key(server: Server) -> str:
    cli(server.home, "orgs", "create", ORG, "--max-concurrency", "64")
    return server.new_key("--org", ORG)


def wait_full(server: Server, within: float = 60) -> None:
    """Until the pool holds its default: four prepared sandboxes."""
    deadline = time.monotonic() + within
    while len(prepared(server)) < 4:
        if time.monotonic() > deadline:
            raise WrongOutput("the pool did not fill")
        time.sleep(0.2)


def prepared(server: Server) -> dict[str, list[int]]:
    """Each sandbox of the server's cgroups: its host pids (all of them waiting ones when
    nothing runs)."""
    found: dict[str, list[int]] = {}
    for base in Path("/sys/fs/cgroup").glob(f"*/baponi/srv-{server.process.pid}-*"):
        for group in base.glob("sbx-*"):
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
            found.setdefault(group.name, []).extend(
                p for p in pids if p not in found.get(group.name, [])
            )
        break
    return found


def latency(
    case: Case,
    pooled: httpx.Client,
    cold: httpx.Client,
    runs: int,
    warmup: int,
    gap_s: float,
    thread: str | None = None,
) -> dict[str, Any]:
    samples: dict[str, list[float]] = {"bare": [], "pooled": [], "cold": []}
    extra = {"thread_id": thread} if thread else {}

    def api(client: httpx.Client) -> float:
        start = time.perf_counter()
        response = client.post(
            "/v1/sandbox/execute", json={"code": case.code, "language": case.language, **extra}
        )
        elapsed = time.perf_counter() - start
        if response.status_code != 200 or response.json().get("stdout") != case.expected:
            raise WrongOutput(f"{case.language}: {response.status_code} {response.text}")
        return elapsed

    sides = [
        ("bare", lambda: run_bare(case)),
        ("pooled", lambda: api(pooled)),
        ("cold", lambda: api(cold)),
    ]
    for i in range(warmup + runs):
        order = sides[i % 3 :] + sides[: i % 3]  # each side in each position in turn
        for name, run in order:
            elapsed = run()
            if i >= warmup:
                samples[name].append(elapsed * 1000)
            time.sleep(gap_s)
    return {name: (percentile(s, 50), percentile(s, 99)) for name, s in samples.items()}


def first_output(pooled: httpx.Client, runs: int, gap_s: float) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        with pooled.stream(
            "POST",
            "/v1/sandbox/execute",
            json={"code": "print(1)"},
            headers={"Accept": "application/x-ndjson"},
        ) as response:
            seen = None
            for line in response.iter_lines():  # to its end, the first output timed
                if seen is None and line and json.loads(line).get("type") == "output":
                    seen = (time.perf_counter() - start) * 1000
            if seen is None:
                raise WrongOutput("a stream without output")
            times.append(seen)
        time.sleep(gap_s)
    return percentile(times, 50), percentile(times, 99)


async def throughput_api(url: str, key: str, duration: float) -> tuple[int, int]:
    ok = failed = 0
    end = time.monotonic() + duration

    async def worker() -> None:
        nonlocal ok, failed
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as client:
            while time.monotonic() < end:
                response = await client.post("/v1/sandbox/execute", json={"code": "print(1)"})
                good = response.status_code == 200 and response.json().get("stdout") == "1\n"
                ok, failed = ok + good, failed + (not good)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return ok, failed


async def throughput_bare(duration: float) -> int:
    done = 0
    end = time.monotonic() + duration

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < end:
            process = await asyncio.create_subprocess_exec(
                "/usr/bin/python3",
                "-c",
                "print(1)",
                env={},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, _ = await process.communicate()
            if process.returncode != 0 or out != b"1\n":
                raise WrongOutput("bare python failed under load")
            done += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done


def language_of(pids: list[int]) -> str:
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"def _boot():" in cmdline:
            return "python"
        if b"/run/baponi/.boot.js" in cmdline:
            return "node"
    return "bash"


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(server: Server) -> dict[str, Any]:
    """Idle cost per prepared sandbox, by language (MiB), and the pool's total."""
    by_language: dict[str, list[tuple[float, float]]] = {}
    root = Path("/sys/fs/cgroup/memory/baponi")
    for name, pids in prepared(server).items():
        usage = next(root.glob(f"srv-{server.process.pid}-*/{name}/memory.usage_in_bytes"), None)
        cgroup_mib = int(usage.read_text()) / 2**20 if usage is not None else float("nan")
        pss_mib = sum(pss_kib(p) for p in pids) / 1024
        by_language.setdefault(language_of(pids), []).append((cgroup_mib, pss_mib))
    total_cgroup = sum(c for rows in by_language.values() for c, _ in rows)
    total_pss = sum(p for rows in by_language.values() for _, p in rows)
    return {
        "per_sandbox": {
            lang: {"cgroup_mib": rows[0][0], "pss_mib": rows[0][1], "count": len(rows)}
            for lang, rows in sorted(by_language.items())
        },
        "pool_cgroup_mib": total_cgroup,
        "pool_pss_mib": total_pss,
    }


def cgroup_costs(runs: int = 50) -> dict[str, float]:
    """Median ms of joining a sandbox's cgroups (create, limit, attach, remove) and of
    what stays on the request path (the OOM counter), with this server's code."""
    from baponi_core._sandbox.cgroups import Cgroups
    from baponi_core._sandbox.spec import Limits

    groups = Cgroups.detect()
    if groups is None:
        return {}
    join, counter = [], []
    try:
        for i in range(runs):
            sleeper = subprocess.Popen(["sleep", "5"])
            start = time.perf_counter()
            group = groups.create(f"bench-{i}", Limits())
            group.attach(sleeper.pid)
            joined = time.perf_counter()
            group.oom_kills()
            counted = time.perf_counter()
            sleeper.kill()
            sleeper.wait()
            group.remove()
            join.append((joined - start) * 1000)
            counter.append((counted - joined) * 1000)
    finally:
        groups.close()
    return {"join_ms": percentile(join, 50), "oom_counter_ms": percentile(counter, 50)}


def row(
    name: str, bare: tuple[float, float], side: tuple[float, float], target: float | None
) -> str:
    ratio = side[0] / bare[0]
    aim = f"<= {target:.1f}x" if target is not None else ""
    verdict = "" if target is None else ("met" if ratio <= target else "not met")
    p99 = side[1] / side[0]
    return (
        f"| {name} | {bare[0]:.1f} / {bare[1]:.1f} | {side[0]:.1f} / {side[1]:.1f} "
        f"| {ratio:.2f}x | {aim} {verdict} | {p99:.2f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="measured runs per case and side")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--gap-ms", type=float, default=50.0, help="pause between two requests")
    parser.add_argument("--duration", type=float, default=30.0, help="throughput seconds per side")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)
    gap = args.gap_ms / 1000
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    lines = [
        "| case | bare p50 / p99 ms | API p50 / p99 ms | ratio p50 | target | p99 / p50 |",
        "|---|---:|---:|---:|---|---:|",
    ]
    with tempfile.TemporaryDirectory(prefix="baponi-pool-") as scratch:
        pooled_server = start_server(Path(scratch) / "pooled", *POOLED)
        cold_server = start_server(Path(scratch) / "cold", *COLD)
        try:
            pooled_key, cold_key = bench_key(pooled_server), bench_key(cold_server)
            wait_full(pooled_server)
            time.sleep(2)
            results["memory"] = memory(pooled_server)
            with pooled_server.client(pooled_key) as pooled, cold_server.client(cold_key) as cold:
                thread = unique("bench")
                cases = [(c.language, c, None) for c in CASES]
                cases.append(("python, thread_id", CASES[0], thread))
                for name, case, thread_id in cases:
                    print(f"measuring {name} ...", file=sys.stderr, flush=True)
                    got = latency(case, pooled, cold, args.runs, args.warmup, gap, thread_id)
                    results[name] = got
                    lines.append(row(f"{name}, pooled", got["bare"], got["pooled"], TARGETS[name]))
                    lines.append(row(f"{name}, cold", got["bare"], got["cold"], None))
                    results[name]["cold_overhead_p50_ms"] = got["cold"][0] - got["bare"][0]
                print("measuring streaming ...", file=sys.stderr, flush=True)
                stream = first_output(pooled, args.runs, gap)
                bare_python = results["python"]["bare"]
                results["stream first output"] = stream
                lines.append(row("stream first output, pooled", bare_python, stream, 0.5))
            print("measuring throughput ...", file=sys.stderr, flush=True)
            ok, failed = asyncio.run(throughput_api(pooled_server.url, pooled_key, args.duration))
            bare_done = asyncio.run(throughput_bare(args.duration))
            results["throughput"] = {
                "pooled_per_s": ok / args.duration,
                "bare_per_s": bare_done / args.duration,
                "errors": failed,
            }
            if failed:
                raise WrongOutput(f"{failed} requests failed under load")
        except WrongOutput as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            stop_server(pooled_server)
            stop_server(cold_server)
    results["cgroups"] = cgroup_costs()
    results["load_after"] = os.getloadavg()
    print("\n".join(lines))
    t = results["throughput"]
    print(
        f"\nthroughput at {CONCURRENCY}: pooled {t['pooled_per_s']:.1f}/s, bare python "
        f"{t['bare_per_s']:.1f}/s: {t['pooled_per_s'] / t['bare_per_s']:.2f}x (target >= 1.0x), "
        f"{t['errors']} errors"
    )
    for lang in ("python", "node", "bash"):
        print(f"cold path overhead, {lang}: {results[lang]['cold_overhead_p50_ms']:.1f} ms (p50)")
    m = results["memory"]
    for lang, cost in m["per_sandbox"].items():
        cgroup, pss = cost["cgroup_mib"], cost["pss_mib"]
        print(f"idle {lang} sandbox: {cgroup:.1f} MiB (cgroup), {pss:.1f} MiB (PSS)")
    cgroup, pss = m["pool_cgroup_mib"], m["pool_pss_mib"]
    print(f"idle default pool: {cgroup:.1f} MiB (cgroups), {pss:.1f} MiB (PSS)")
    if results["cgroups"]:
        join, left = results["cgroups"]["join_ms"], results["cgroups"]["oom_counter_ms"]
        print(f"cgroup join (ahead): {join:.2f} ms; left on the request path: {left:.3f} ms")
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
