"""Volumes: storage shared by the keys bound to it, mounted at /data/<slug>/ in their sandboxes.

    .venv/bin/python examples/volumes.py

Self-contained: it starts its own `baponi serve` in a temporary home, made with the operator
CLI as you would make yours:

    baponi volumes create reports                   # read-write
    baponi volumes create reference --read-only
    baponi keys create --volume reports --volume reference

then uploads a file into "reports" through the Files API (source "volume", id the slug), runs
code that reads it and writes a result next to it, downloads the result, narrows the mounts
with sub_paths, and shows what read-only means. More: docs/storage.md.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
from baponi import Baponi, ForbiddenError

warnings.filterwarnings("ignore", message="Base URL")  # plain HTTP is fine on loopback

CLI = [sys.executable, "-m", "baponi_cli"]

SUMMARISE = """
import csv, json, os
rows = list(csv.DictReader(open("/data/reports/in/sales.csv")))
total = sum(int(row["amount"]) for row in rows)
os.makedirs("/data/reports/out", exist_ok=True)
json.dump({"rows": len(rows), "total": total}, open("/data/reports/out/summary.json", "w"))
print("mounted:", sorted(os.listdir("/data")))
try:
    open("/data/reference/note.txt", "w")
except OSError as exc:
    print("reference:", exc.strerror)
"""

LOOK_AROUND = """
import os
print("mounted:", sorted(os.listdir("/data")), "in reports:", sorted(os.listdir("/data/reports")))
print("the input is out of sight:", not os.path.exists("/data/reports/in/sales.csv"))
"""


def cli(home: Path, *args: str) -> str:
    done = subprocess.run([*CLI, *args, "--home", str(home)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"baponi {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def server(home: Path) -> Iterator[str]:
    """`baponi serve` on a free loopback port until the block ends; its base URL."""
    port = free_port()
    log = home.parent / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*CLI, "serve", "--home", str(home), "--port", str(port)], stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()  # SIGTERM: it drains and exits
        process.wait(timeout=60)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def tour(client: Baponi) -> None:
    # 1. Upload straight into the volume: source "volume", id the volume's slug.
    data = b"region,amount\nnorth,120\nsouth,80\neast,45\n"
    upload = client.upload_url(
        source="volume", id="reports", path="in/sales.csv", content_length=len(data)
    )
    headers = {header.name: header.value for header in upload.headers}
    httpx.put(upload.url, headers=headers, content=data).raise_for_status()

    # 2. Code sees every bound volume under /data; "reference" is mounted read-only.
    result = client.execute(SUMMARISE)
    print(result.stdout, end="")

    # 3. What the code wrote is in the volume, for the Files API and for every bound key.
    for entry in client.list_files(source="volume", id="reports"):
        print(f"  {entry.size:>4} {entry.path}")
    download = client.download_url(source="volume", id="reports", path="out/summary.json")
    print("summary:", httpx.get(download.url).json())

    # 4. sub_paths: only the listed directories are mounted; other volumes are not at all.
    result = client.execute(LOOK_AROUND, sub_paths=["/data/reports/out"])
    print(result.stdout, end="")

    # 5. A listed directory missing from a writable volume is made; from a read-only one,
    #    the execution fails before the code runs.
    made = client.execute("print('ok')", sub_paths=["/data/reports/scratch/run-1"])
    missing = client.execute("print('never')", sub_paths=["/data/reference/missing"])
    print(f"new directory: {made.stdout.strip()}; read-only, missing: {missing.error}")

    # 6. The Files API refuses to change a read-only volume.
    try:
        client.upload_url(source="volume", id="reference", path="x.txt", content_length=1)
    except ForbiddenError as exc:
        print(f"upload to reference -> {exc.status_code}: {exc}")


def main() -> None:
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as scratch:
        home = Path(scratch) / "home"
        created = cli(home, "volumes", "create", "reports")
        print(created)
        reports = created.split("(")[1].split(")")[0]  # its id: "created volume reports (vol_...)"
        print(cli(home, "volumes", "create", "reference", "--read-only"))
        key = cli(home, "keys", "create", "--volume", "reports", "--volume", "reference")
        with server(home) as url, Baponi(api_key=key, base_url=url) as client:
            tour(client)
        print(cli(home, "volumes", "list"))  # slug, id, mode
        # On local storage a volume lives under the home, volumes/<org id>/<volume id>: a
        # filesystem image of its own (<volume id>.img) where the server can make one (as
        # root), else a directory holding the files.
        images = [*(home / "volumes").glob(f"*/{reports}.img")]
        (stored,) = images or (home / "volumes").glob(f"*/{reports}/out/summary.json")
        print("on disk:", stored.relative_to(home))


if __name__ == "__main__":
    main()
