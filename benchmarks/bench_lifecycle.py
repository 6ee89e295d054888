"""Streaming latency and inline throughput of a real ``baponi serve``.

Two measurements, in one run, against a server this script starts in a temporary home:

1. **Streaming vs inline.** The same code is sent inline (``POST /v1/sandbox/execute``,
   JSON answer) and streaming (``Accept: application/x-ndjson``), one request at a time
   over one keep-alive ``httpx.Client``, interleaved. For each case it reports inline
   total latency, the streaming time to the first ``output`` event, and the streaming
   total (until the ``result`` event). A fast case (``print(1)``) shows what streaming
   costs; a slow one (print, sleep 0.5 s, print) shows what it gains: the first output
   arrives long before the execution ends.
2. **Throughput.** Inline ``print(1)`` at concurrency 1, 4, 16 and 64: each level sends a
   fixed number of requests from that many concurrent workers (``httpx.AsyncClient``),
   with the key of an organisation created with ``--max-concurrency 64``. It reports
   executions per second, p50/p99 latency, responses by status code, and the server
   process's resident memory (``VmRSS`` of ``/proc/<pid>/status``, sampled every 50 ms
   in a thread): before, peak during, and after each level. The sweep runs
   ``--rounds`` times, so a plateau can be told apart from growth.

Only the server's own process is sampled: every sandbox is a separate process tree in
its own cgroup with its own memory limit, gone when its execution ends, so the figure
that must stay bounded is the server's.

Run from the repository root::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_lifecycle.py            # full run
    PYTHONPATH=. .venv/bin/python benchmarks/bench_lifecycle.py --quick    # a smoke run

It asserts no timings, but exits non-zero if any run printed the wrong output or any
throughput request got something other than 200, so the numbers never silently measure
failures. The server's stdout and stderr go to a file (``--server-log``; kept and named
on stderr when something failed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.stats import percentile
from tests.harness import Server, cli, start_server, stop_server

NDJSON = "application/x-ndjson"
EXECUTE = "/v1/sandbox/execute"
LEVELS = (1, 4, 16, 64)
ORG = "bench"
SAMPLE_EVERY_S = 0.05


@dataclass(frozen=True)
class Case:
    name: str
    code: str
    expected: str


CASES = (
    Case("print(1)", "print(1)", "1\n"),
    Case(
        "print, sleep 0.5 s, print",
        "import time; print(1, flush=True); time.sleep(0.5); print(2)",
        "1\n2\n",
    ),
)


class WrongOutput(Exception):
    """A run did not print what it should have."""


# --- 1. streaming versus inline -------------------------------------------------------


def run_inline(client: httpx.Client, case: Case) -> float:
    start = time.perf_counter()
    response = client.post(EXECUTE, json={"code": case.code})
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise WrongOutput(f"inline {case.name}: HTTP {response.status_code}: {response.text}")
    if response.json().get("stdout") != case.expected:
        raise WrongOutput(f"inline {case.name}: {response.text}")
    return elapsed


def run_streaming(client: httpx.Client, case: Case) -> tuple[float, float]:
    """Seconds to the first output event and to the result event."""
    start = time.perf_counter()
    first_output: float | None = None
    stdout, result = "", None
    with client.stream("POST", EXECUTE, json={"code": case.code}, headers={"Accept": NDJSON}) as r:
        if r.status_code != 200:
            raise WrongOutput(f"streaming {case.name}: HTTP {r.status_code}: {r.read()!r}")
        for line in r.iter_lines():
            event = json.loads(line)
            if event["type"] == "output" and first_output is None:
                first_output = time.perf_counter() - start
            if event["type"] == "output" and event["stream"] == "stdout":
                stdout += event["data"]
            if event["type"] == "result":
                result = event
                break
    total = time.perf_counter() - start
    if result is None or result["status"] != "success" or stdout != case.expected:
        raise WrongOutput(f"streaming {case.name}: stdout {stdout!r}, result {result!r}")
    assert first_output is not None  # stdout is not empty, so an output event came
    return first_output, total


def measure_streaming(client: httpx.Client, case: Case, runs: int, warmup: int) -> dict[str, Any]:
    inline: list[float] = []
    first: list[float] = []
    total: list[float] = []

    def streaming() -> None:
        to_first, to_end = run_streaming(client, case)
        first.append(to_first * 1000)
        total.append(to_end * 1000)

    sides: list[Callable[[], None]] = [
        lambda: inline.append(run_inline(client, case) * 1000),
        streaming,
    ]
    for i in range(warmup + runs):
        # Alternate which side goes first so neither always follows the other.
        for side in sides if i % 2 == 0 else reversed(sides):
            side()
        if i < warmup:
            for samples in (inline, first, total):
                samples.clear()
    return {
        "case": case.name,
        "code": case.code,
        "runs": runs,
        **{f"inline_p{p}_ms": percentile(inline, p) for p in (50, 99)},
        **{f"first_output_p{p}_ms": percentile(first, p) for p in (50, 99)},
        **{f"stream_total_p{p}_ms": percentile(total, p) for p in (50, 99)},
    }


def streaming_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| code | runs | inline p50 | inline p99 | stream first output p50 "
        "| stream first output p99 | stream total p50 | stream total p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [
            f"{r[f'{k}_p{p}_ms']:.1f} ms"
            for k in ("inline", "first_output", "stream_total")
            for p in (50, 99)
        ]
        lines.append(f"| `{r['code']}` | {r['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- 2. throughput and the server's memory --------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in KiB, and the thread count, of process ``pid``."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "Threads"):
            values[name] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time of process ``pid`` itself, and of its reaped children (the sandboxes: the
    server waits for each bwrap, which waits for what ran inside)."""
    # Fields after the parenthesised command name; utime is field 14 of proc(5).
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    tick = os.sysconf("SC_CLK_TCK")
    return (utime + stime) / tick, (cutime + cstime) / tick


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU time all processes and the kernel spent busy (the first line of /proc/stat:
    everything but idle and iowait), summed over CPUs."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pid: int) -> tuple[float, float, float, float]:
    """Server, sandboxes, this client, and the whole machine."""
    return (*cpu_seconds(pid), client_cpu_seconds(), machine_busy_seconds())


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class MemorySampler:
    """Samples the server's VmRSS every 50 ms in a thread and keeps the peak since the
    last :meth:`reset` (the kernel's VmHWM is a lifetime peak, not a per-level one)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = 0
        self.peak_threads = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> None:
        with self._lock:
            self.peak_rss = self.peak_threads = 0
        self.sample()

    def sample(self) -> None:
        status = proc_status(self.pid)
        with self._lock:
            self.peak_rss = max(self.peak_rss, status["VmRSS"])
            self.peak_threads = max(self.peak_threads, status["Threads"])

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.sample()


@dataclass
class Level:
    concurrency: int
    round: int
    latencies_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # the first few, for the report
    wall_s: float = 0.0
    cpu_s: list[float] = field(default_factory=list)  # server, sandboxes, client, machine


def stdout_of(response: httpx.Response) -> str | None:
    try:
        stdout = response.json().get("stdout")
    except ValueError:  # not JSON: counted as wrong output, not a crash of the level
        return None
    return stdout if isinstance(stdout, str) else None


async def one_request(client: httpx.AsyncClient, level: Level) -> None:
    start = time.perf_counter()
    try:
        response = await client.post(EXECUTE, json={"code": "print(1)"})
    except httpx.HTTPError as exc:
        level.outcomes[type(exc).__name__] += 1
        if len(level.failures) < 5:
            level.failures.append(f"{type(exc).__name__}: {exc}")
        return
    elapsed = time.perf_counter() - start
    status = response.status_code
    wrong = status == 200 and stdout_of(response) != "1\n"
    level.outcomes["200 wrong output" if wrong else str(status)] += 1
    if status == 200 and not wrong:
        level.latencies_ms.append(elapsed * 1000)
    elif len(level.failures) < 5:
        level.failures.append(f"HTTP {status}: {response.text[:300]}")


async def run_level(server: Server, key: str, level: Level, requests: int) -> None:
    # One client (one keep-alive connection) per worker: a single pool shared by 64
    # workers cost the client 3-5 ms of CPU per request instead of about 1 ms (measured
    # ad hoc), CPU this 2-core machine would take from the server.
    clients = [
        httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        for _ in range(level.concurrency)
    ]
    # Open the connections first so the timed part measures executions, not handshakes.
    await asyncio.gather(*(client.get("/health") for client in clients))
    remaining = iter(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in remaining:  # a shared iterator: each request is taken exactly once
            await one_request(client, level)

    cpu_before = cpu_snapshot(server.process.pid)
    start = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in clients))
    level.wall_s = time.perf_counter() - start
    after = cpu_snapshot(server.process.pid)
    level.cpu_s = [b - a for a, b in zip(cpu_before, after, strict=True)]
    await asyncio.gather(*(client.aclose() for client in clients))


def measure_throughput(
    server: Server, key: str, levels: list[int], requests: int, rounds: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    pid = server.process.pid
    rows: list[dict[str, Any]] = []
    with MemorySampler(pid) as sampler:
        start_status = proc_status(pid)
        for round_ in range(1, rounds + 1):
            for concurrency in levels:
                print(f"throughput: round {round_}, concurrency {concurrency} ...", file=sys.stderr)
                before = proc_status(pid)["VmRSS"]
                sampler.reset()
                level = Level(concurrency, round_)
                asyncio.run(run_level(server, key, level, requests))
                sampler.sample()
                row = level_row(level, before, sampler, proc_status(pid), open_fds(pid))
                rows.append({**row, **cpu_columns(level.cpu_s, row)})
    time.sleep(1)  # let finished executions settle before the last reading
    end_status = proc_status(pid)
    memory = {
        "rss_start_kib": start_status["VmRSS"],
        "rss_end_kib": end_status["VmRSS"],
        "hwm_end_kib": end_status["VmHWM"],
        "threads_end": end_status["Threads"],
        "fds_end": open_fds(pid),
    }
    return rows, memory


def level_row(
    level: Level, rss_before: int, sampler: MemorySampler, after: dict[str, int], fds: int
) -> dict[str, Any]:
    ok = level.latencies_ms or [math.nan]
    return {
        "round": level.round,
        "concurrency": level.concurrency,
        "requests": sum(level.outcomes.values()),
        "ok": len(level.latencies_ms),
        "wall_s": level.wall_s,
        "exec_per_s": len(level.latencies_ms) / level.wall_s,
        "p50_ms": percentile(ok, 50),
        "p99_ms": percentile(ok, 99),
        "outcomes": dict(sorted(level.outcomes.items())),
        "failures": level.failures,
        "rss_before_kib": rss_before,
        "rss_peak_kib": sampler.peak_rss,
        "rss_after_kib": after["VmRSS"],
        "threads_peak": sampler.peak_threads,
        "fds_after": fds,
    }


def cpu_columns(cpu: list[float], row: dict[str, Any]) -> dict[str, float]:
    """CPU per successful execution (server, sandboxes, benchmark client), and how busy
    the machine's CPUs were while the level ran: by those three, and in all (the rest is
    other processes and kernel threads, such as cgroup clean-up)."""
    server, sandboxes, client, machine = cpu
    per_exec = [seconds * 1000 / max(row["ok"], 1) for seconds in (server, sandboxes, client)]
    capacity = row["wall_s"] * (os.cpu_count() or 1) / 100
    return {
        "server_cpu_ms": per_exec[0],
        "sandbox_cpu_ms": per_exec[1],
        "client_cpu_ms": per_exec[2],
        "ours_cpu_pct": (server + sandboxes + client) / capacity,
        "machine_cpu_pct": machine / capacity,
    }


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def throughput_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| round | concurrency | requests | exec/s | p50 | p99 | responses "
        "| RSS before | RSS peak | RSS after | threads peak | fds after |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        outcomes = ", ".join(f"{k}: {v}" for k, v in r["outcomes"].items())
        lines.append(
            f"| {r['round']} | {r['concurrency']} | {r['requests']} | {r['exec_per_s']:.1f} "
            f"| {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {outcomes} "
            f"| {mib(r['rss_before_kib'])} MiB | {mib(r['rss_peak_kib'])} MiB "
            f"| {mib(r['rss_after_kib'])} MiB | {r['threads_peak']} | {r['fds_after']} |"
        )
    return "\n".join(lines)


def cpu_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| round | concurrency | server CPU / exec | sandboxes CPU / exec "
        "| client CPU / exec | CPUs busy: these three | CPUs busy: machine |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['round']} | {r['concurrency']} | {r['server_cpu_ms']:.1f} ms "
            f"| {r['sandbox_cpu_ms']:.1f} ms | {r['client_cpu_ms']:.1f} ms "
            f"| {r['ours_cpu_pct']:.0f} % | {r['machine_cpu_pct']:.0f} % |"
        )
    return "\n".join(lines)


def memory_line(memory: dict[str, Any]) -> str:
    return (
        f"Server RSS: {mib(memory['rss_start_kib'])} MiB before the throughput sweep, "
        f"{mib(memory['rss_end_kib'])} MiB 1 s after it (lifetime peak VmHWM "
        f"{mib(memory['hwm_end_kib'])} MiB); {memory['threads_end']} threads and "
        f"{memory['fds_end']} open fds at the end."
    )


# --- the run ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Streaming time to first output vs inline latency, and inline throughput at "
            "several concurrency levels with the server's memory. Starts and stops its own "
            "`baponi serve`; run from the repo root with PYTHONPATH=."
        ),
        epilog="Exits non-zero if any output is wrong or any throughput request is not a 200.",
    )
    parser.add_argument("--runs", type=int, default=50, help="streaming/inline runs per case")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured runs first per case")
    parser.add_argument("--requests", type=int, default=500, help="requests per level")
    parser.add_argument("--rounds", type=int, default=2, help="times to run the level sweep")
    parser.add_argument(
        "--levels", type=int, nargs="+", default=list(LEVELS), help="concurrency levels"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 5 runs, 1 warm-up, 64 requests, 1 round"
    )
    parser.add_argument("--skip-streaming", action="store_true", help="throughput only")
    parser.add_argument("--skip-throughput", action="store_true", help="streaming only")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    parser.add_argument(
        "--server-log", type=Path, metavar="PATH", help="keep the server's stdout+stderr here"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.warmup, args.requests, args.rounds = 5, 1, 64, 1
    if args.runs < 1 or args.warmup < 0 or args.requests < 1 or args.rounds < 1:
        parser.error("--runs, --requests and --rounds must be >= 1, --warmup >= 0")
    if max(args.levels) > 64 or min(args.levels) < 1:
        parser.error("levels must be between 1 and 64 (the benchmark org's limit)")
    return args


def keep_log(log: Path, wanted: Path | None, failed: bool) -> None:
    if wanted is None and failed:
        fd, name = tempfile.mkstemp(prefix="bench_lifecycle-server-", suffix=".log")
        os.close(fd)
        wanted = Path(name)
    if wanted is not None and log.exists():
        shutil.copyfile(log, wanted)
        print(f"server log: {wanted}", file=sys.stderr)


def run(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    results: dict[str, Any] = {"load_average": os.getloadavg(), "cpus": os.cpu_count()}
    if not args.skip_streaming:
        with server.client() as client:
            results["streaming"] = []
            for case in CASES:
                print(f"streaming vs inline: {case.name} ...", file=sys.stderr, flush=True)
                results["streaming"].append(measure_streaming(client, case, args.runs, args.warmup))
    if not args.skip_throughput:
        cli(server.home, "orgs", "create", ORG, "--max-concurrency", "64")
        key = cli(server.home, "keys", "create", "--org", ORG, "--name", "bench")
        rows, memory = measure_throughput(server, key, args.levels, args.requests, args.rounds)
        results["throughput"], results["memory"] = rows, memory
    return results


def report(results: dict[str, Any]) -> bool:
    """Print the tables; return whether every throughput request got a good 200."""
    print(f"load average at start: {results['load_average'][0]:.2f} ({results['cpus']} CPUs)\n")
    if "streaming" in results:
        print(streaming_table(results["streaming"]) + "\n")
    clean = True
    if "throughput" in results:
        print(throughput_table(results["throughput"]) + "\n")
        print(cpu_table(results["throughput"]) + "\n")
        print(memory_line(results["memory"]))
        for row in results["throughput"]:
            if row["ok"] != row["requests"]:
                clean = False
                print(f"concurrency {row['concurrency']}: {row['failures']}", file=sys.stderr)
    return clean


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    failed = True
    with tempfile.TemporaryDirectory(prefix="baponi-bench-") as tmp:
        home = Path(tmp) / "home"
        server = start_server(home)  # its log goes to <home>.log, inside tmp
        try:
            results = run(args, server)
            failed = not report(results)
        except WrongOutput as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            stop_server(server)
            keep_log(Path(f"{home}.log"), args.server_log, failed)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
