"""Every runnable example in examples/ runs as a user would run it and does what its docstring
says: a subprocess with the documented environment, against a real `baponi serve` (the
session's, or one of this module's own for webhooks), checked on what it prints."""

from __future__ import annotations

import ast
import hashlib
import hmac
import importlib.util
import json
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from baponi_core._storage.disks import Disks
from tests.harness import (
    ROOT,
    Server,
    cli,
    free_port,
    org_id_of,
    start_server,
    stop_server,
    unique,
    wait_until,
)
from tests.receiver import make_ca

EXAMPLES = ROOT / "examples"
TRACE = r"trc_[\w-]+"


def run_example(name: str, env: dict[str, str], *args: str) -> tuple[str, str]:
    """``python examples/<name>.py`` with ``env`` over a clean base (PATH, HOME, LANG, and
    the session's runtimes, for the servers the self-contained ones start): its stdout and
    stderr, once it has exited 0 without a traceback."""
    kept = ("PATH", "HOME", "LANG", "BAPONI_RUNTIMES")
    base = {key: os.environ[key] for key in kept if key in os.environ}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
        cwd=ROOT,
        env={**base, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout, done.stderr


def output(name: str, env: dict[str, str], *args: str) -> str:
    """The stdout of an example that must write nothing to stderr."""
    stdout, stderr = run_example(name, env, *args)
    assert stderr == ""
    return stdout


def lines(stdout: str) -> list[str]:
    return stdout.splitlines()


@pytest.fixture(scope="module")
def org(server: Server) -> tuple[str, dict[str, str]]:
    """An organisation of this module's own (its id, and the environment the examples take
    with a key of it), so their threads and executions cannot collide with other tests'."""
    name = unique("examples")
    cli(server.home, "orgs", "create", name, "--max-concurrency", "5")
    key = cli(server.home, "keys", "create", "--org", name)
    return org_id_of(server.home, name), {"BAPONI_API_KEY": key, "BAPONI_BASE_URL": server.url}


@pytest.fixture()
def org_env(org: tuple[str, dict[str, str]]) -> dict[str, str]:
    return org[1]


@pytest.mark.slow
def test_sdk_quickstart(org_env: dict[str, str]) -> None:
    out = lines(output("sdk_quickstart", org_env))
    assert len(out) == 5, out
    assert re.fullmatch(r"hello from Python \(3, \d+\)", out[0])
    assert re.fullmatch(r"hello from \S+", out[1])  # GREETING came through env_vars
    assert out[2:] == ["[ 2, 4, 6 ]", "remember me", "success=False error=timeout"]


def test_files_roundtrip(server: Server, org: tuple[str, dict[str, str]]) -> None:
    owner, env = org
    out = lines(output("files_roundtrip", env))
    assert out[0] == "done"
    # Sizes of the uploaded JSON and of the JSON the sandboxed code wrote.
    listing = {line.split()[1]: int(line.split()[0]) for line in out[1:-2]}
    assert listing["input.json"] == len(json.dumps({"values": [1, 2, 3, 4, 5]}))
    assert listing["results/output.json"] == len(json.dumps({"sum": 15, "mean": 3.0}))
    assert ast.literal_eval(out[-2]) == {"sum": 15, "mean": 3.0}  # the downloaded output
    assert ast.literal_eval(out[-1]) == {"deleted": True}
    # It is gone from the thread's home on disk; the input is still there.
    (thread,) = (p for p in (server.threads / owner).glob("analysis-*") if p.is_dir())
    assert (thread / "input.json").is_file() and not (thread / "results/output.json").exists()


@pytest.mark.slow
def test_streaming(org_env: dict[str, str]) -> None:
    stdout, stderr = run_example("streaming", org_env)
    # The stderr line went to stderr, once per run, and nothing else did.
    assert stderr == "liftoff\nliftoff\n"
    first, second = stdout.split("success=True\n\n")
    countdown = ["5...", "4...", "3...", "2...", "1..."]

    head = lines(first)
    assert re.fullmatch(rf"\[seq 1\] {TRACE} is running", head[0])
    assert head[1:6] == countdown
    assert re.fullmatch(r"\[seq \d+\] ended: success, exit code 0", head[6])

    tail = lines(second)
    assert re.fullmatch(rf"\[seq 1\] {TRACE} is running", tail[0])
    assert tail[0].split()[2] != head[0].split()[2]  # a second execution
    gap = next(i for i, line in enumerate(tail) if line.startswith("-- disconnected"))
    cut = re.fullmatch(r"-- disconnected after seq (\d+); reconnecting in 1 s --", tail[gap])
    assert cut is not None and gap >= 3  # at least two lines before the drop
    # Across the drop every line shows once, in order: nothing lost, nothing twice.
    assert [line for line in tail[1:-2] if line != tail[gap]] == countdown
    ended = re.fullmatch(r"\[seq (\d+)\] ended: success, exit code 0", tail[-2])
    assert ended is not None and int(ended[1]) > int(cut[1])
    whole = "".join(line + "\n" for line in countdown)
    assert tail[-1] == f"stdout of the whole run: {whole!r}"


@pytest.mark.slow
def test_cancel(org_env: dict[str, str]) -> None:
    out = lines(output("cancel", org_env))
    at = out.index("cancel -> cancelling")
    assert out[:3] == ["tick 0", "tick 1", "tick 2"] and at >= 3
    # Killed at once: at most a tick or two already on their way follow the cancel.
    assert all(re.fullmatch(r"tick \d", line) for line in out[3:at] + out[at + 1 : -3])
    assert out[-3] == "result: status=cancelled error='Cancelled by user' exit_code=137"
    record = re.fullmatch(
        r"record: status=cancelled error='Cancelled by user' duration_ms=(\d+)", out[-2]
    )
    assert record is not None and int(record[1]) < 30_000  # the full run takes 60 s
    assert re.fullmatch(rf"second cancel -> 409: execution {TRACE} has already ended.*", out[-1])


@pytest.mark.slow
def test_webhook_without_url_polls(org_env: dict[str, str]) -> None:
    out = lines(output("webhook", org_env))
    assert re.fullmatch(rf"accepted {TRACE}: (queued|running)", out[0])
    assert out[1:] == [
        "success: 'done after 2 s\\n'",
        "set BAPONI_WEBHOOK_URL=https://... to try a delivery",
    ]


@pytest.fixture()
def hook_setup(tmp_path: Path) -> Iterator[tuple[Server, Path, Path, Path]]:
    """A server of our own that trusts a throwaway CA and delivers to loopback, plus a
    certificate and key from that CA for the receiver, and the CA's PEM."""
    ca, pem = make_ca(tmp_path)
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    running = start_server(
        tmp_path / "home",
        "--allow-private-webhooks",
        "--webhook-ca-file",
        str(pem),
        "--webhook-retry-delays",
        "1,1",
    )
    yield running, cert, key, pem
    stop_server(running)


@pytest.fixture()
def receiver(
    hook_setup: tuple[Server, Path, Path, Path], tmp_path: Path
) -> Iterator[tuple[str, Path]]:
    """examples/webhook_receiver.py in the background on a free port, checking signatures
    with the org's secret as its docstring says: its URL and the file its stdout goes to."""
    server, cert, key, _ = hook_setup
    secret = cli(server.home, "orgs", "webhook-secret")
    port = free_port()
    log = tmp_path / "receiver.out"
    flags = ["--port", str(port), "--cert", str(cert), "--key", str(key)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "webhook_receiver.py"), *flags],
            cwd=ROOT,
            env={"PATH": os.environ["PATH"], "BAPONI_WEBHOOK_SECRET": secret},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def listening() -> bool:
            assert process.poll() is None, log.read_text()
            return f"listening on https://127.0.0.1:{port}/" in log.read_text()

        wait_until(listening, 15, lambda: f"the receiver to listen: {log.read_text()}")
        yield f"https://127.0.0.1:{port}/hook", log
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.slow
def test_webhook_to_the_example_receiver(
    hook_setup: tuple[Server, Path, Path, Path], receiver: tuple[str, Path]
) -> None:
    server, _, _, ca_file = hook_setup
    url, log = receiver
    env = {"BAPONI_API_KEY": server.key, "BAPONI_BASE_URL": server.url, "BAPONI_WEBHOOK_URL": url}
    out = lines(output("webhook", env))
    assert re.fullmatch(rf"accepted {TRACE}: (queued|running)", out[0])
    assert out[1] == "success: 'done after 2 s\\n'"
    assert re.fullmatch(rf"success; delivery to {re.escape(url)}: (pending|delivered)", out[2])
    assert out[3] == "delivery: delivered"

    # The receiver verified the signature (else it prints "refused") and printed the record.
    head, body = log.read_text().split("\n", 1)[1].split("\n", 1)
    attempt = re.fullmatch(rf"({TRACE}) \(attempt 1\):", head)
    assert attempt is not None, log.read_text()
    record = json.loads(body)
    assert record["trace_id"] == attempt[1]
    assert record["status"] == "success" and record["stdout"] == "done after 2 s\n"
    assert record["webhook_url"] == url and record["delivery_mode"] == "webhook"
    assert record["webhook_delivery_status"] == "pending"  # as sent, before the answer
    with server.client() as api:  # the server agrees it was delivered
        stored = api.get(f"/v1/executions/{attempt[1]}").json()
    assert stored["webhook_delivery_status"] == "delivered"

    # And it does check: an unsigned POST is refused with 401 and never printed as a record.
    answer = httpx.post(
        url, content=body.encode(), verify=ssl.create_default_context(cafile=ca_file), timeout=10
    )
    assert answer.status_code == 401
    wait_until(
        lambda: "refused: bad or stale signature" in log.read_text(),
        5,
        lambda: f"the refusal to be printed: {log.read_text()}",
    )
    assert log.read_text().count(" (attempt ") == 1


@pytest.mark.slow
def test_mcp_client(tmp_path: Path) -> None:
    # Its own home and HOME: it must never touch ~/.baponi. TMPDIR: where it saves the plot.
    home = tmp_path / "home"
    env = {"BAPONI_HOME": str(home), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    stdout = output("mcp_client", env)
    out = lines(stdout)
    assert out[0] == "tools: sandbox_execute, files_download"
    live = [ast.literal_eval(line.split("] ", 1)[1]) for line in out if "[live " in line]
    assert "".join(live) == "3...\n2...\n1...\ndone\n"  # streamed as progress notifications
    assert "'stdout': '3...\\n2...\\n1...\\ndone\\n'" in stdout
    assert "is_error=True" in out and "[exit code: 1]" in out
    assert "NameError: name 'undefined_name' is not defined" in out

    wrote = re.search(r"^wrote plot\.png \((\d+) bytes\)$", stdout, re.M)
    assert wrote is not None
    saved = tmp_path / "baponi-mcp-plot.png"
    assert f"saved the image/png image block as {saved}" in out
    png = saved.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) == int(wrote[1])

    rows = "".join(f"{i},{i * i}\n" for i in range(200_000))
    fetched = re.search(
        r"^GET http://127\.0\.0\.1:\d+/v1/files/signed/\S+: (\d+) bytes, ", stdout, re.M
    )
    assert fetched is not None and int(fetched[1]) == len(rows)
    assert out[-1].endswith(f"ending {rows[-12:]!r}")

    # State went to BAPONI_HOME, not to $HOME/.baponi.
    assert (home / "baponi.db").is_file()
    (image,) = home.glob("threads/*/mcp-example.img")  # the thread home's filesystem
    listing = subprocess.run(
        ["debugfs", "-R", "ls /", str(image)], capture_output=True, text=True, check=True
    )
    assert "plot.png" in listing.stdout.split()
    assert not (tmp_path / ".baponi").exists()


@pytest.mark.slow
def test_volumes(tmp_path: Path) -> None:
    # Self-contained (its own server in a temporary home): keep that temp dir in tmp_path.
    out = lines(output("volumes", {"HOME": str(tmp_path), "TMPDIR": str(tmp_path)}))
    reports = re.fullmatch(r"created volume reports \((vol_\w+)\), read-write", out[0])
    assert reports is not None
    assert re.fullmatch(r"created volume reference \(vol_\w+\), read-only", out[1])
    for line in [
        "mounted: ['reference', 'reports']",
        "reference: Read-only file system",
        "summary: {'rows': 3, 'total': 245}",
        "mounted: ['reports'] in reports: ['out']",
        "the input is out of sight: True",
        "new directory: ok; read-only, missing: volume_mount_error",
        "upload to reference -> 403: volume reference is read-only",
    ]:
        assert line in out, out
    listing = {line.split()[1]: int(line.split()[0]) for line in out if line.startswith("  ")}
    assert listing["in/sales.csv"] == len(b"region,amount\nnorth,120\nsouth,80\neast,45\n")
    assert listing["out/summary.json"] == len(json.dumps({"rows": 3, "total": 245}))
    # The read-write volume: one image where the server makes filesystems, else its files.
    where = ".img" if Disks.unavailable() is None else "/out/summary.json"
    assert re.fullmatch(rf"on disk: volumes/org_\w+/{reports[1]}{re.escape(where)}", out[-1])


@pytest.mark.parametrize(
    "header",
    ["t=1,v1=\u00e9", "t=1,v1=\u00e9" + "0" * 63, "t=\u00b2,v1=00", "t=\uff11,v1=00", "t=,v1="],
)
def test_example_receiver_refuses_odd_signatures(header: str) -> None:
    """Its verify() answers False to any header a client may send, never raises (a str
    with non-ASCII in compare_digest, int() of a digit it refuses)."""
    spec = importlib.util.spec_from_file_location("receiver", EXAMPLES / "webhook_receiver.py")
    assert spec is not None and spec.loader is not None
    receiver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(receiver)
    assert receiver.verify(header, b"{}", "whsec_x", now=1) is False
    good = hmac.new(b"whsec_x", b"1.{}", hashlib.sha256).hexdigest()
    assert receiver.verify(f"t=1,v1={good}", b"{}", "whsec_x", now=1) is True


@pytest.mark.slow
def test_opensandbox_quickstart(server: Server, org_env: dict[str, str]) -> None:
    env = {
        "OPEN_SANDBOX_API_KEY": org_env["BAPONI_API_KEY"],
        "OPEN_SANDBOX_DOMAIN": f"{server.url}/opensandbox",
    }
    out = lines(output("opensandbox_quickstart", env))
    assert re.fullmatch(r"created sbx_[0-9a-f]{16}: Running", out[0])
    assert out[1:] == [
        "hello",
        "kept between commands",
        "step 1",
        "step 2",
        "step 3",
        "paused: Paused",
        "resumed: Running; kept between commands",
        "killed: Terminated",
    ]


@pytest.mark.slow
def test_opensandbox_code(server: Server, org_env: dict[str, str]) -> None:
    env = {
        "OPEN_SANDBOX_API_KEY": org_env["BAPONI_API_KEY"],
        "OPEN_SANDBOX_DOMAIN": f"{server.url}/opensandbox",
    }
    out = lines(output("opensandbox_code", env))
    assert out[:3] == [
        "sum: 14 (run 2)",
        "mean: 2.8",
        "error: IndexError: list index out of range",
    ]
    assert re.fullmatch(r"figure: \d{4,} bytes of PNG", out[3]) and len(out) == 4
