"""execd's files on a real ``baponi serve``, against the bare tools in the same run:

* ``GET /files/info`` of one file (a ``find`` inside the sandbox, over HTTP): p50 and
  p99, against the bare ``find -maxdepth 0 -printf`` on the host;
* a 256 MiB upload (``POST /files/upload``, chunked multipart, streamed into the sandbox)
  and its download (``GET /files/download``): MiB/s, against the bare ``cat`` through a
  pipe into and out of a file in ``/dev/shm``.

Run from the repository root, as root::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_execd_files.py --runs 200
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from baponi_core._sandboxes.filesinfo import FORMAT
from benchmarks.stats import percentile
from tests.harness import start_server, stop_server
from tests.opensandbox.clients import opened

CHUNK = bytes(range(256)) * 256  # 64 KiB
SIZE = 256 << 20


def body(boundary: str) -> Iterator[bytes]:
    """A chunked multipart upload of SIZE bytes to ~/blob, as the SDK sends one."""
    yield f"--{boundary}\r\n".encode()
    yield b'Content-Disposition: form-data; name="metadata"; filename="metadata"\r\n\r\n'
    yield b'{"path": "~/blob"}\r\n'
    yield f"--{boundary}\r\n".encode()
    yield b'Content-Disposition: form-data; name="file"; filename="blob"\r\n\r\n'
    for _ in range(SIZE // len(CHUNK)):
        yield CHUNK
    yield f"\r\n--{boundary}--\r\n".encode()


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return samples


def bare_throughput(where: Path) -> tuple[float, float]:
    """Seconds to write SIZE bytes through ``cat`` into a file, then to read them back."""
    target = where / "blob"
    began = time.perf_counter()
    writer = subprocess.Popen(["sh", "-c", 'cat > "$1"', "sh", target], stdin=subprocess.PIPE)
    assert writer.stdin is not None
    for _ in range(SIZE // len(CHUNK)):
        writer.stdin.write(CHUNK)
    writer.stdin.close()
    writer.wait()
    wrote = time.perf_counter() - began
    began = time.perf_counter()
    reader = subprocess.Popen(["cat", target], stdout=subprocess.PIPE)
    assert reader.stdout is not None
    while reader.stdout.read(1 << 16):
        pass
    reader.wait()
    return wrote, time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        here = Path(shm)
        (here / "f").write_text("x")
        bare = ["find", str(here / "f"), "-maxdepth", "0", "-printf", FORMAT]
        server = start_server(Path(home) / "home")
        try:
            with opened(server) as execd:
                client = execd.client
                client.post("/directories", json={"~/d": {"mode": 755}}).raise_for_status()
                info = timed(lambda: client.get("/files/info", params={"path": "~/d"}), args.runs)
                host = timed(
                    lambda: subprocess.run(bare, check=True, capture_output=True), args.runs
                )
                boundary = "bench-boundary"
                began = time.perf_counter()
                client.post(
                    "/files/upload",
                    content=body(boundary),
                    headers={"content-type": f"multipart/form-data; boundary={boundary}"},
                    timeout=300,
                ).raise_for_status()
                upload = time.perf_counter() - began
                began = time.perf_counter()
                with client.stream("GET", "/files/download", params={"path": "~/blob"}) as got:
                    size = sum(len(c) for c in got.iter_bytes())
                download = time.perf_counter() - began
                assert size == SIZE, size
        finally:
            stop_server(server)
        wrote, read = bare_throughput(here)
    mib = SIZE / (1 << 20)
    p50, p99 = percentile(info, 50), percentile(info, 99)
    h50 = percentile(host, 50)
    print(
        f"info        p50 {p50 * 1000:.1f} ms  p99 {p99 * 1000:.1f} ms  bare find p50 "
        f"{h50 * 1000:.1f} ms  ratio {p50 / h50:.2f}"
    )
    print(
        f"upload      {mib / upload:.0f} MiB/s  bare cat {mib / wrote:.0f} MiB/s  "
        f"ratio {upload / wrote:.2f}"
    )
    print(
        f"download    {mib / download:.0f} MiB/s  bare cat {mib / read:.0f} MiB/s  "
        f"ratio {download / read:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
