"""What the egress proxy costs: a ``pip install`` and a 100 MiB download, through a
sandbox's proxy against the same on the host, directly.

In one run on one machine, with one loopback upstream (``tests/egress/upstream.py``)
serving a small wheel built here from a PEP 503 index, and ``/blob`` (``--size`` MiB):

* **pip, direct**: ``/usr/bin/python3 -m pip install --user`` of the wheel on the host,
  into a fresh ``HOME``, no proxy;
* **pip, proxy**: the same command in a sandbox of a real ``baponi serve
  --allow-private-egress`` whose profile allows 127.0.0.1, into a fresh thread; timed
  inside the sandbox around the command, so sandbox start-up is left out (and reported
  apart: the whole execution, as the client sees it);
* **download, direct**: ``curl -o /dev/null`` of ``/blob`` on the host;
* **download, proxy**: the same curl in a sandbox, through the proxy; curl's own
  ``time_total`` on both sides.

Direct and proxied runs are interleaved. Ratios: pip proxy time / direct time (lower is
better, 1 is free); download throughput proxy / direct (target >= 0.8).

Run from the repository root (as the test suite runs: root, bubblewrap)::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_egress.py --runs 5 --size 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.egress.upstream import PACKAGE, UNPROXIED_BASH, Upstream, package_files
from tests.harness import Server, cli, start_server, stop_server, unique

MiB = 1 << 20
PIP = (
    "python3 -m pip install --quiet --user --break-system-packages --no-cache-dir "
    "--disable-pip-version-check --index-url {index} " + PACKAGE
)
CURL = "curl -sS -o /dev/null -w '%{{time_total}} %{{size_download}}' {url}"


def execute(server: Server, key: str, code: str, thread: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"code": code, "language": "bash", "timeout": 300}
    if thread:
        payload["thread_id"] = thread
    with server.client(key) as api:
        response = api.post("/v1/sandbox/execute", json=payload, timeout=330)
    body: dict[str, Any] = response.json()
    if response.status_code != 200 or not body.get("success"):
        raise RuntimeError(f"the sandboxed run failed: {body}")
    return body


def pip_direct(index: str) -> float:
    with tempfile.TemporaryDirectory() as home:
        env = {"PATH": "/usr/bin:/bin", "HOME": home}
        started = time.perf_counter()
        subprocess.run(
            ["/bin/bash", "-c", PIP.format(index=index)],
            env=env,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - started


def pip_proxied(server: Server, key: str, index: str) -> tuple[float, float]:
    """Seconds of the pip command in the sandbox; seconds of the whole execution."""
    code = (
        UNPROXIED_BASH
        + "start=$(date +%s%N)\n"
        + PIP.format(index=index)
        + "\necho $(( $(date +%s%N) - start ))"
    )
    started = time.perf_counter()
    body = execute(server, key, code, unique("bench-pip"))
    whole = time.perf_counter() - started
    return int(body["stdout"].split()[-1]) / 1e9, whole


def download_direct(url: str, size: int) -> float:
    done = subprocess.run(
        ["/bin/bash", "-c", CURL.format(url=url)],
        env={"PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        text=True,
    )
    return _curl_seconds(done.stdout, size)


def download_proxied(server: Server, key: str, url: str, size: int) -> float:
    return _curl_seconds(
        execute(server, key, UNPROXIED_BASH + CURL.format(url=url))["stdout"], size
    )


def _curl_seconds(text: str, size: int) -> float:
    seconds, got = text.split()
    if int(got) != size:
        raise RuntimeError(f"downloaded {got} bytes of {size}")
    return float(seconds)


def report(f: dict[str, Any]) -> None:
    runs, size = f["runs"], f["size_mib"]
    print(
        f"pip install, direct on the host     {f['pip_direct_s'] * 1000:7.0f} ms (median of {runs})"
    )
    print(f"pip install, in a sandbox via proxy {f['pip_proxy_s'] * 1000:7.0f} ms")
    print(f"  ratio {f['pip_ratio']:.2f}; whole execution {f['pip_execution_s'] * 1000:.0f} ms")
    print(f"{size} MiB download, direct            {f['download_direct_mib_s']:7.0f} MiB/s")
    print(f"{size} MiB download, via the proxy     {f['download_proxy_mib_s']:7.0f} MiB/s")
    print(f"  ratio {f['download_ratio']:.2f} (target >= 0.8)")
    load = f"{f['load_start']:.1f} at the start, {f['load_end']:.1f} at the end"
    print(f"load average (1 min): {load}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=100, help="MiB downloaded (default 100)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]  # the figures mean little on a busy machine: say how busy
    size = args.size * MiB
    upstream = Upstream({}, blob_bytes=size)
    upstream.files.update(package_files(upstream.port))
    index, blob = upstream.url("/simple/"), upstream.url("/blob")
    with tempfile.TemporaryDirectory() as scratch:
        server = start_server(Path(scratch) / "home", "--allow-private-egress")
        try:
            cli(
                server.home,
                "profiles",
                "set",
                "bench",
                "--network",
                "allowlist",
                "--allow",
                "127.0.0.1",
            )
            key = server.new_key("--profile", "bench")
            samples: dict[str, list[float]] = {
                k: [] for k in ("pip_direct", "pip_proxy", "pip_execution", "dl_direct", "dl_proxy")
            }
            pip_direct(index), pip_proxied(server, key, index)  # warm-up: caches, compiled init
            for run in range(args.runs):
                order = [0, 1] if run % 2 == 0 else [1, 0]
                for side in order:
                    if side == 0:
                        samples["pip_direct"].append(pip_direct(index))
                        samples["dl_direct"].append(download_direct(blob, size))
                    else:
                        inside, whole = pip_proxied(server, key, index)
                        samples["pip_proxy"].append(inside)
                        samples["pip_execution"].append(whole)
                        samples["dl_proxy"].append(download_proxied(server, key, blob, size))
        finally:
            stop_server(server)
            upstream.stop()
    median = {k: statistics.median(v) for k, v in samples.items()}
    figures = {
        "runs": args.runs,
        "size_mib": args.size,
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "pip_direct_s": median["pip_direct"],
        "pip_proxy_s": median["pip_proxy"],
        "pip_execution_s": median["pip_execution"],
        "pip_ratio": median["pip_proxy"] / median["pip_direct"],
        "download_direct_mib_s": args.size / median["dl_direct"],
        "download_proxy_mib_s": args.size / median["dl_proxy"],
        "download_ratio": median["dl_direct"] / median["dl_proxy"],
    }
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
