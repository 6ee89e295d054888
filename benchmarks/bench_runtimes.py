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
    PYTHONPATH=. .venv/bin/python benchmarks/bench_runtimes.py --default-image --runs 100

``--default-image`` takes the default runtime image set-up built instead of busybox, and
runs ``print(1)``, ``console.log(1)`` and ``echo 1`` on each side: the host runtime's
interpreters against the image's (Debian's Python 3.11, Node 22, bash).

It asserts nothing, but exits non-zero if a request printed the wrong output.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.stats import percentile
from tests.harness import cli, default_image, import_runtime, start_server, stop_server
from tests.runtimes.images import Image, busybox_layer, write_layout

CODE = {"bash": "echo 1", "python": "print(1)", "node": "console.log(1)"}


def timed(api: httpx.Client, language: str) -> float:
    started = time.perf_counter()
    body = api.post(
        "/v1/sandbox/execute", json={"code": CODE[language], "language": language}
    ).json()
    elapsed = time.perf_counter() - started
    if body.get("stdout") != "1\n":
        raise SystemExit(f"unexpected answer: {body}")
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--default-image",
        action="store_true",
        help="the default runtime image set-up built instead of busybox, in python, node "
        "and bash (else bash only)",
    )
    args = parser.parse_args()
    languages = ["python", "node", "bash"] if args.default_image else ["bash"]
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as scratch:
        base = Path(scratch)
        runtimes = base / "runtimes"
        import_runtime(runtimes, "default", "host:")
        if args.default_image:
            layout = default_image()
            if layout is None:
                raise SystemExit("no default runtime image: scripts/setup.sh builds it")
            import_runtime(runtimes, "image", f"oci:{layout}")
        else:
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
            samples = {(n, lang): [] for lang in languages for n in clients}
            for round_ in range(args.warmup + args.runs):
                order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
                for language in languages:
                    for name in order:
                        took = timed(clients[name], language)
                        if round_ >= args.warmup:
                            samples[name, language].append(took)
        finally:
            stop_server(server)
    print("| language | runtime | p50 ms | p99 ms |\n|---|---|---|---|")
    for (name, language), values in samples.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        print(f"| {language} | {name} | {p50:.1f} | {p99:.1f} |")
    for language in languages:
        image, host = samples["image", language], samples["host", language]
        print(f"{language}: image / host p50 {percentile(image, 50) / percentile(host, 50):.2f}")


if __name__ == "__main__":
    main()
