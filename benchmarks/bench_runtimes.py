"""What an image runtime costs against the host runtime, on one server, side by side.

It imports two runtimes into a runtimes directory of its own: the host runtime (the host's
/usr, the old behaviour) as ``default``, and a small image (a static busybox, built here
without Docker like the tests' images) as ``image``; then alternates ``echo 1`` in bash
between a key on each, swapping which goes first every round, so drift hits both alike.
The difference is the image path's own set-up: bwrap binding the image's root and the
generated /etc files over its /etc, and (as root) the generation's root mounted while it
has sandboxes.

Run from the repository root, as root::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_runtimes.py --runs 200

It asserts nothing, but exits non-zero if a request printed the wrong output.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.stats import percentile
from tests.harness import cli, import_runtime, start_server, stop_server
from tests.runtimes.images import Image, busybox_layer, write_layout


def timed(api: httpx.Client) -> float:
    started = time.perf_counter()
    body = api.post("/v1/sandbox/execute", json={"code": "echo 1", "language": "bash"}).json()
    elapsed = time.perf_counter() - started
    if body.get("stdout") != "1\n":
        raise SystemExit(f"unexpected answer: {body}")
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as scratch:
        base = Path(scratch)
        runtimes = base / "runtimes"
        import_runtime(runtimes, "default", "host:")
        image = Image([busybox_layer()], {"PATH": "/bin"})
        import_runtime(runtimes, "image", str(write_layout(image, base / "layout")))
        home = base / "home"
        cli(home, "profiles", "set", "img", "--runtime", "image", "--runtimes", str(runtimes))
        server = start_server(home, "--runtimes", str(runtimes))
        try:
            clients = {
                "host": server.client(),
                "image": server.client(server.new_key("--profile", "img")),
            }
            samples: dict[str, list[float]] = {name: [] for name in clients}
            for round_ in range(args.warmup + args.runs):
                order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
                for name in order:
                    took = timed(clients[name])
                    if round_ >= args.warmup:
                        samples[name].append(took)
        finally:
            stop_server(server)
    print("| runtime | p50 ms | p99 ms |\n|---|---|---|")
    for name, values in samples.items():
        print(f"| {name} | {percentile(values, 50):.1f} | {percentile(values, 99):.1f} |")
    ratio = percentile(samples["image"], 50) / percentile(samples["host"], 50)
    print(f"\nimage / host p50: {ratio:.2f}")


if __name__ == "__main__":
    main()
