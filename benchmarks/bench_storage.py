"""Execution latency with a thread on each storage backend, against the local disk.

Four real ``baponi serve`` processes run side by side on loopback, one per backend:

* **local disk**: the default ``--storage`` (thread homes in the server's home);
* **S3**: ``--storage s3://...`` on moto's S3 server;
* **GCS**: ``--storage gs://...`` on gcp-storage-emulator;
* **Azure**: ``--storage az://...`` on Azurite.

The emulators are the ones of the test suite (``tests/emulators.py``), all on 127.0.0.1.
With a cloud backend, the server lists the thread's prefix and downloads changed objects into
a local workspace before each execution with a ``thread_id``, and uploads changed files
after it, so the cases below isolate that sync:

* **no thread**: ``print(1)`` without ``thread_id`` (storage is never touched: the baseline);
* **small home, unchanged**: ``print(1)`` in a thread of 10 files of 1 KiB (one listing
  before, one scan of the workspace after, nothing moved);
* **small home + 100 KiB write**: the same home; the code rewrites one 100 KiB file with
  new random bytes each time (one upload per execution). Every run's file is downloaded
  afterwards through the Files API and checked by SHA-256 (untimed);
* **200 files, fresh cache**: a thread of 200 files of 10 KiB (about 2 MiB) whose
  workspace and manifest under ``<home>/cache`` are deleted (untimed) before every cloud
  run, as after a restart with an empty cache or on a new server: everything is downloaded.
  The code checks that all 200 files are there.
* **200 files, all rewritten**: the same thread; the code writes new random bytes into all
  200 files, so the server uploads all of them after each run (its listing before is
  unchanged).

Backends are interleaved, their order rotating every iteration, so drift hits all of them
alike. Times are client-side (one keep-alive ``httpx.Client`` per server). The emulators
are local processes: this measures the server's sync overhead, not cloud network latency.

Run from the repository root::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_storage.py

It asserts no timings but exits non-zero if any execution fails or prints the wrong output,
a written file does not come back intact, or a server logged a failed push, so the figures
never measure a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socketserver
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.stats import percentile
from tests.emulators import Emulator, start_azure, start_gcs, start_s3
from tests.harness import Server, start_server, stop_server

RESULTS = Path(__file__).resolve().parent / "results"
KiB = 1024
SMALL = (10, 1 * KiB)  # files, bytes each
BIG = (200, 10 * KiB)
WRITE = 100 * KiB
SEED = (
    "import os\n"
    "for i in range({count}):\n"
    "    with open(f'/home/baponi/f{{i:03}}.bin', 'wb') as out:\n"
    "        out.write(os.urandom({size} - 1) + b'.')\n"  # no final CR: see random_bytes
    "print(1)\n"
)
REWRITE = (
    "import hashlib, os\n"
    f"data = os.urandom({WRITE} - 1) + b'.'\n"
    "with open('/home/baponi/changed.bin', 'wb') as out:\n"
    "    out.write(data)\n"
    "print(hashlib.sha256(data).hexdigest())\n"
)
CHECK_BIG = (
    "import os\n"
    "names = [n for n in os.listdir('/home/baponi') if n.endswith('.bin')]\n"
    "sizes = {os.path.getsize('/home/baponi/' + n) for n in names}\n"
    f"assert len(names) == {BIG[0]} and sizes == {{{BIG[1]}}}, (len(names), sizes)\n"
    "print(1)\n"
)


class Failed(Exception):
    """An execution or a check did not do what it should have."""


@dataclass
class Backend:
    name: str
    server: Server
    client: httpx.Client
    emulator: Emulator | None = None

    def execute(self, code: str, thread: str | None) -> tuple[float, str]:
        body: dict[str, Any] = {"code": code, "language": "python"}
        if thread:
            body["thread_id"] = thread
        start = time.perf_counter()
        response = self.client.post("/v1/sandbox/execute", json=body)
        elapsed = (time.perf_counter() - start) * 1000
        result = response.json() if response.status_code == 200 else {}
        if result.get("success") is not True:
            raise Failed(
                f"{self.name}, thread {thread}: HTTP {response.status_code} {response.text}"
            )
        return elapsed, str(result.get("stdout", ""))

    def drop_cache(self, thread: str) -> None:
        """Delete the thread's workspace and its manifest, while no execution uses them."""
        if self.emulator is None:
            return  # the local disk has no cache: the home is the workspace
        spaces = list((self.server.home / "cache" / "server" / "threads").glob(f"*/{thread}"))
        if len(spaces) != 1:
            raise Failed(f"{self.name}: expected one workspace of {thread}, found {spaces}")
        shutil.rmtree(spaces[0])
        spaces[0].with_name(f"{thread}.manifest.json").unlink()

    def download(self, thread: str, path: str) -> bytes:
        signed = self.client.post(
            "/v1/files/download_url", json={"source": "thread", "id": thread, "path": path}
        )
        signed.raise_for_status()
        response = httpx.get(signed.json()["url"], timeout=60)
        response.raise_for_status()
        return response.content

    def file_count(self, thread: str) -> int:
        listed = self.client.post("/v1/files/list", json={"source": "thread", "id": thread})
        listed.raise_for_status()
        return sum(1 for f in listed.json()["files"] if not f["is_directory"])


@dataclass(frozen=True)
class Case:
    name: str
    thread: str | None
    code: str
    runs: int
    before: Callable[[Backend], None] = lambda backend: None
    check: Callable[[Backend, str], None] = lambda backend, out: _is_one(out)


def _is_one(out: str) -> None:
    if out != "1\n":
        raise Failed(f"stdout {out!r}, expected '1\\n'")


def _stored_intact(backend: Backend, out: str) -> None:
    """The file the run wrote must come back with the digest the run printed."""
    data = backend.download("write", "changed.bin")
    if len(data) != WRITE or hashlib.sha256(data).hexdigest() != out.strip():
        raise Failed(f"{backend.name}: changed.bin not stored intact ({len(data)} bytes)")


def measure(backends: list[Backend], case: Case, warmup: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {b.name: [] for b in backends}
    for i in range(warmup + case.runs):
        shift = i % len(backends)  # rotate the order so no backend always follows another
        for backend in backends[shift:] + backends[:shift]:
            case.before(backend)
            elapsed, out = backend.execute(case.code, case.thread)
            try:
                case.check(backend, out)
            except Failed as exc:
                raise Failed(f"{case.name} on {backend.name}: {exc}") from exc
            if i >= warmup:
                samples[backend.name].append(elapsed)
    return samples


def seed(backends: list[Backend]) -> None:
    """Fill the thread homes through executions (so cloud ones are pushed by the server),
    then check through the Files API that every file was stored."""
    for thread, (count, size) in (("small", SMALL), ("write", SMALL), ("big", BIG)):
        for backend in backends:
            backend.execute(SEED.format(count=count, size=size), thread)
            if (found := backend.file_count(thread)) != count:
                raise Failed(f"{backend.name}: thread {thread} has {found} files, not {count}")


def cases(runs: int, fresh_runs: int) -> list[Case]:
    return [
        Case("no thread", None, "print(1)", runs),
        Case(f"thread, {SMALL[0]} x 1 KiB, unchanged", "small", "print(1)", runs),
        Case(
            f"thread, {SMALL[0]} x 1 KiB + rewrite 100 KiB",
            "write",
            REWRITE,
            runs,
            check=_stored_intact,
        ),
        Case(
            f"thread, {BIG[0]} x 10 KiB, fresh cache",
            "big",
            CHECK_BIG,
            fresh_runs,
            before=lambda backend: backend.drop_cache("big"),
        ),
        Case(
            f"thread, {BIG[0]} x 10 KiB, all rewritten",
            "big",
            SEED.format(count=BIG[0], size=BIG[1]),
            fresh_runs,
        ),
    ]


@contextlib.contextmanager
def quiet_disconnects() -> Iterator[None]:
    """gcp-storage-emulator (in this process) prints a traceback whenever a client closes a
    connection before reading the whole response; that is noise, not a failure."""
    original = socketserver.BaseServer.handle_error

    def handle_error(self: socketserver.BaseServer, request: Any, address: Any) -> None:
        if not isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            original(self, request, address)

    socketserver.BaseServer.handle_error = handle_error  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        socketserver.BaseServer.handle_error = original  # type: ignore[method-assign]


def start_backends(stack: contextlib.ExitStack, work: Path) -> list[Backend]:
    def serve(name: str, emulator: Emulator | None) -> Backend:
        home = work / name.split()[0].lower()
        args: list[str] = []
        if emulator is not None:
            args = ["--storage", emulator.fresh_url(), "--storage-options"]
            args.append(json.dumps(emulator.options))
        server = start_server(home, *args, env=emulator.env if emulator else None)
        stack.callback(stop_server, server)
        client = stack.enter_context(server.client())
        return Backend(name, server, client, emulator)

    for name in ("gcs", "azurite"):
        (work / name).mkdir()
    s3 = stack.enter_context(start_s3())
    gcs = stack.enter_context(start_gcs(work / "gcs"))
    azure = stack.enter_context(start_azure(work / "azurite"))
    return [
        serve("local disk", None),
        serve("S3 (moto)", s3),
        serve("GCS (gcp-storage-emulator)", gcs),
        serve("Azure (Azurite)", azure),
    ]


def summarise(case: Case, samples: dict[str, list[float]]) -> dict[str, Any]:
    local = next(iter(samples.values()))
    base50, base90 = percentile(local, 50), percentile(local, 90)
    figures = {}
    for name, values in samples.items():
        p50, p90 = percentile(values, 50), percentile(values, 90)
        figures[name] = {
            "p50_ms": p50,
            "p90_ms": p90,
            "ratio_p50": p50 / base50,
            "ratio_p90": p90 / base90,
            "samples_ms": values,
        }
    return {"case": case.name, "runs": case.runs, "backends": figures}


def table(rows: list[dict[str, Any]]) -> str:
    names = list(rows[0]["backends"])
    lines = [
        "| case | runs | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for row in rows:
        cells = [
            f"{f['p50_ms']:.1f} / {f['p90_ms']:.1f} ms ({f['ratio_p50']:.2f}x)"
            for f in row["backends"].values()
        ]
        lines.append(f"| {row['case']} | {row['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Execution latency with a thread on local disk, S3 (moto), GCS "
            "(gcp-storage-emulator) and Azure (Azurite): p50/p90 and the ratio to local disk "
            "for no thread, an unchanged small home, a 100 KiB rewrite, a fresh cache of "
            "200 files and 200 files rewritten. Starts its own emulators and servers on "
            "127.0.0.1; run from the repo root with PYTHONPATH=."
        ),
        epilog="Cells are 'p50 / p90 (p50 ratio to local disk)'. Exits non-zero on any failure.",
    )
    parser.add_argument("--runs", type=int, default=50, help="measured runs per case (50)")
    parser.add_argument(
        "--fresh-runs", type=int, default=30, help="measured runs of the fresh-cache case (30)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured runs per case (3)")
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS / "bench_storage.json",
        metavar="OUT",
        help="where to write every figure and sample (benchmarks/results/bench_storage.json)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.fresh_runs < 1 or args.warmup < 0:
        parser.error("--runs and --fresh-runs must be >= 1, --warmup >= 0")

    started, load = time.monotonic(), os.getloadavg()
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    try:
        with contextlib.ExitStack() as stack, quiet_disconnects():
            backends = start_backends(stack, work)
            print("seeding thread homes ...", file=sys.stderr, flush=True)
            seed(backends)
            for case in cases(args.runs, args.fresh_runs):
                print(f"measuring {case.name} ...", file=sys.stderr, flush=True)
                rows.append(summarise(case, measure(backends, case, args.warmup)))
            for backend in backends:  # a push failure does not fail the execution: look
                if "could not store" in backend.server.log:
                    raise Failed(f"{backend.name}: a push failed, see its log")
    except (Failed, httpx.HTTPError) as exc:
        # Keep the homes and the servers' logs (<home>.log) for a look.
        print(f"error: {exc}\nserver homes and logs kept in {work}", file=sys.stderr)
        return 1
    shutil.rmtree(work)

    elapsed = time.monotonic() - started
    print(table(rows))
    print(f"\n{elapsed:.0f} s in all; load average at start {load[0]:.2f}", file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"warmup": args.warmup, "seconds": elapsed, "load_average_at_start": load}
    args.json.write_text(json.dumps({**report, "results": rows}, indent=2) + "\n")
    print(f"written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
