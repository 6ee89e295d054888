"""Files through local signed URLs versus a plain ``cp`` on the same disk.

In one run on one machine:

* **cp**: ``cp`` of a file of ``--size`` MiB to another file in the same directory tree
  (the server's home), then ``sync``-free, as the server does not fsync either;
* **upload**: ``PUT`` of the same file to a signed upload URL of a real ``baponi serve``
  on loopback, streamed from disk by httpx;
* **download**: ``GET`` of the uploaded file through a signed download URL, streamed to
  disk.

The server's resident memory is sampled every 20 ms during the transfers: it must stay
flat (not grow with the file). Each transfer is checked by SHA-256, so the figures never
measure a failure.

Run from the repository root::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_files.py --size 1024
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from tests.harness import start_server, stop_server

MiB = 1 << 20
CHUNK = 4 * MiB


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakMemory:
    """Samples the server's RSS in a thread while a transfer runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_file(path: Path, size_mib: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(MiB)
    with path.open("wb") as out:
        for _ in range(size_mib):
            out.write(block)
            digest.update(block)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="file size in MiB (1024)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-files-", dir=Path.home()) as tmp:
        work = Path(tmp)
        source = work / "source.bin"
        expected = make_file(source, args.size)
        server = start_server(work / "home")
        try:
            api = httpx.Client(
                base_url=server.url,
                headers={"Authorization": f"Bearer {server.key}"},
                timeout=600,
            )
            copy = work / "home" / "copy.bin"
            cp_s = timed(lambda: subprocess.run(["cp", str(source), str(copy)], check=True))
            copy.unlink()

            idle = rss_mib(server.process.pid)
            signed = api.post(
                "/v1/files/upload_url",
                json={"id": "bench", "path": "big.bin", "content_length": args.size * MiB},
            ).json()
            headers = {"Content-Length": str(args.size * MiB)}
            with PeakMemory(server.process.pid) as up_mem:
                up_s = timed(
                    lambda: httpx.put(
                        signed["url"], content=chunks(source), headers=headers, timeout=600
                    ).raise_for_status()
                )
            url = api.post(
                "/v1/files/download_url", json={"id": "bench", "path": "big.bin"}
            ).json()["url"]
            target = work / "download.bin"

            def download() -> None:
                with httpx.stream("GET", url, timeout=600) as response, target.open("wb") as out:
                    response.raise_for_status()
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)

            with PeakMemory(server.process.pid) as down_mem:
                down_s = timed(download)
            if sha256(target) != expected:
                print("downloaded file differs from the source", file=sys.stderr)
                return 1
        finally:
            stop_server(server)

    rate = args.size / cp_s
    print(f"file: {args.size} MiB; server RSS idle {idle:.1f} MiB\n")
    print("| transfer | time | MiB/s | vs cp | server peak RSS |")
    print("|---|---|---|---|---|")
    print(f"| cp (same disk) | {cp_s:.2f} s | {rate:.0f} | 1.00x | |")
    for name, seconds, memory in (("upload", up_s, up_mem), ("download", down_s, down_mem)):
        print(
            f"| {name} (signed URL) | {seconds:.2f} s | {args.size / seconds:.0f} | "
            f"{seconds / cp_s:.2f}x | {memory.peak:.1f} MiB |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
