"""Execution lifecycle: the concurrency limit under a burst, a crash and restart, webhook
deliveries across a restart, and graceful shutdown on SIGTERM. Real servers, real sandboxes."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import (
    TERMINAL,
    Server,
    cli,
    execution_count,
    execution_of,
    free_port,
    marker_processes,
    org_id_of,
    sleep_marker,
    start_server,
    stop_server,
    stored_events,
    unique,
    wait_until,
)
from tests.receiver import Receiver, make_ca

pytestmark = pytest.mark.slow  # servers of their own, bursts, crashes, grace periods

NDJSON = "application/x-ndjson"
LIMIT_MESSAGE = "concurrent execution limit reached (5/5)"


# helpers


def new_org(home: Path, max_concurrency: int) -> tuple[str, str]:
    """A fresh organisation with its own key, so that no other test shares its slots.
    Returns (key, org id)."""
    name = unique("lc")
    cli(home, "orgs", "create", name, "--max-concurrency", str(max_concurrency))
    key = cli(home, "keys", "create", "--org", name)
    return key, org_id_of(home, name)


def marked_sleep(seconds: int) -> tuple[str, str]:
    """Bash code sleeping ``seconds`` in processes that carry a unique marker on their
    command line (the code itself is a file, so the marker must be an argument): a child
    bash and two sleeps. Returns (code, marker)."""
    marker = sleep_marker(seconds)
    code = f"echo started\nbash -c 'sleep {marker}; : {marker}' &\nsleep {marker}\nwait\n"
    return code, marker


def wait_gone(*markers: str, what: str) -> None:
    """Until no host process carries any of ``markers`` (within 5 s)."""
    wait_until(lambda: not any(map(marker_processes, markers)), 5, what)


def submit_async(client: httpx.Client, body: dict[str, Any]) -> str:
    answer = client.post("/v1/sandbox/execute", json=body, headers={"Prefer": "respond-async"})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["trace_id"])


def record(client: httpx.Client, trace_id: str) -> dict[str, Any]:
    answer = client.get(f"/v1/executions/{trace_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def assert_stopped(view: dict[str, Any], exit_code: int = -1) -> None:
    """How an execution cut short by a server stop must look: -1 when the server died and
    the exit status is unknown, 137 (SIGKILL, as for a cancel) when a shutdown killed it."""
    assert view["status"] == "failed", view
    assert view["error"] == "server_stopped", view
    assert view["exit_code"] == exit_code, view
    assert view["completed_at"] is not None, view


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture()
def own() -> Iterator[list[Server]]:
    """Servers a test starts; whatever is still running at the end is stopped."""
    servers: list[Server] = []
    yield servers
    for running in servers:
        if running.process.poll() is None:
            stop_server(running)


# 1. the concurrency limit under a burst


@dataclass
class Answer:
    index: int
    streaming: bool
    status: int
    headers: dict[str, str]
    body: dict[str, Any]  # the JSON answer, or the result event of a stream
    events: list[dict[str, Any]] = field(default_factory=list)


async def _execute(client: httpx.AsyncClient, index: int, streaming: bool) -> Answer:
    body = {"code": f"sleep 1.5; echo {index}", "language": "bash", "timeout": 30}
    headers = {"Accept": NDJSON} if streaming else {}
    async with client.stream("POST", "/v1/sandbox/execute", json=body, headers=headers) as r:
        raw = (await r.aread()).decode()
    kind = r.headers.get("content-type", "")
    events = ndjson(raw) if r.status_code == 200 and kind.startswith(NDJSON) else []
    parsed = events[-1] if events else json.loads(raw)
    return Answer(index, streaming, r.status_code, dict(r.headers), parsed, events)


async def _burst(server: Server, key: str, modes: list[bool]) -> list[Answer]:
    """Send one request per entry of ``modes`` (True: streaming) all at once."""
    async with httpx.AsyncClient(
        base_url=server.url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
    ) as client:
        return list(await asyncio.gather(*(_execute(client, i, s) for i, s in enumerate(modes))))


def burst(server: Server, key: str, modes: list[bool]) -> list[Answer]:
    return asyncio.run(_burst(server, key, modes))


def check_admitted(answer: Answer) -> None:
    """An admitted request ran to the end, in the delivery mode it asked for."""
    if answer.streaming:
        assert answer.body["type"] == "result", answer.events
        assert answer.body["status"] == "success", answer.body
        result = answer.body["result"]
        assert [e["seq"] for e in answer.events] == list(range(1, len(answer.events) + 1))
    else:
        result = answer.body
    assert result["success"] is True, result
    assert result["stdout"] == f"{answer.index}\n", result


def check_refused(answer: Answer) -> None:
    assert answer.body == {"error": "rate_limited", "message": LIMIT_MESSAGE}, answer.body
    assert int(answer.headers["retry-after"]) >= 1, answer.headers


def split(answers: list[Answer]) -> tuple[list[Answer], list[Answer]]:
    """(admitted, refused); anything but 200 or 429 fails the test."""
    assert {a.status for a in answers} <= {200, 429}, [(a.status, a.body) for a in answers]
    admitted = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status == 429]
    for answer in admitted:
        check_admitted(answer)
    for answer in refused:
        check_refused(answer)
    return admitted, refused


def test_concurrency_limit_is_atomic_under_a_burst(server: Server) -> None:
    key, org_id = new_org(server.home, 5)
    admitted, refused = split(burst(server, key, [False] * 50))
    assert (len(admitted), len(refused)) == (5, 45)
    # Every slot came back: a full batch at the limit is admitted again.
    again, _ = split(burst(server, key, [False] * 5))
    assert len(again) == 5
    # Refusals left no trace and nothing was recorded twice.
    assert execution_count(server.home, org_id) == 10


def test_concurrency_limit_covers_streaming_and_inline_together(server: Server) -> None:
    key, org_id = new_org(server.home, 5)
    modes = [i % 2 == 0 for i in range(40)]  # 20 streaming, 20 inline, interleaved
    admitted, refused = split(burst(server, key, modes))
    assert (len(admitted), len(refused)) == (5, 35)
    # Refused streaming requests are plain JSON errors, not streams.
    assert any(a.streaming for a in refused) and any(not a.streaming for a in refused)
    again, _ = split(burst(server, key, [True, False, True, False, True]))
    assert len(again) == 5
    assert execution_count(server.home, org_id) == 10


@pytest.mark.parametrize("path", ["cold_server", "pooled_server"])
def test_an_inline_answer_frees_its_slot_and_is_stored_first(
    path: str, request: pytest.FixtureRequest
) -> None:
    """An inline answer without a thread comes once the program has ended and its end is
    stored, its killed sandbox maybe still going: at a limit of one, back-to-back requests
    are never refused, and the store holds each final record when its answer arrives."""
    server: Server = request.getfixturevalue(path)
    org = unique("answer")
    cli(server.home, "orgs", "create", org, "--max-concurrency", "1")
    with server.client(cli(server.home, "keys", "create", "--org", org)) as client:
        for i in range(12):
            code = f"echo {i}; exit {i % 3}"
            answer = client.post("/v1/sandbox/execute", json={"language": "bash", "code": code})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert (body["stdout"], body["exit_code"]) == (f"{i}\n", i % 3)
            stored = execution_of(server.home, body["trace_id"], org)
            assert stored is not None and stored.exit_code == i % 3, stored
            assert stored.status == ("success" if i % 3 == 0 else "failed"), stored
            assert stored.completed_at is not None and stored.stdout == f"{i}\n", stored


# 2. a crash (SIGKILL) and restart


def read_until_output(client: httpx.Client, body: dict[str, Any]) -> str:
    """Start a streaming execution, read it until its first output, then hang up (the
    execution goes on). Returns its trace id."""
    headers = {"Accept": NDJSON}
    with client.stream("POST", "/v1/sandbox/execute", json=body, headers=headers) as stream:
        assert stream.status_code == 200
        trace_id = None
        for line in stream.iter_lines():
            event = json.loads(line)
            trace_id = trace_id or event.get("trace_id")
            if event["type"] == "output":
                assert trace_id is not None
                return str(trace_id)
    raise AssertionError("stream ended without output")


def test_sigkill_leaves_no_sandbox_and_restart_fails_the_unfinished(
    home: Path, own: list[Server]
) -> None:
    first = start_server(home)
    own.append(first)
    queued_code, queued_marker = marked_sleep(600)
    streamed_code, streamed_marker = marked_sleep(601)
    with first.client() as client:
        queued = submit_async(client, {"code": queued_code, "language": "bash", "timeout": 700})
        streamed = read_until_output(
            client, {"code": streamed_code, "language": "bash", "timeout": 700}
        )
        wait_until(lambda: record(client, queued)["status"] == "running", 10, "running")
    # The stored output must hold the printed line before the crash, or there is nothing
    # for the reconnect to replay.
    wait_until(
        lambda: any(e["type"] == "output" for e in stored_events(home, streamed)),
        10,
        "the streamed output to be stored",
    )
    assert marker_processes(queued_marker) and marker_processes(streamed_marker)

    first.process.kill()
    first.process.wait()
    wait_gone(queued_marker, streamed_marker, what="the sandboxes to end with the server")

    second = start_server(home)
    own.append(second)
    with second.client(first.key) as client:  # the old key still works
        for trace_id in (queued, streamed):
            assert_stopped(record(client, trace_id))
        replay = client.get(f"/v1/executions/{streamed}/output", params={"after_seq": 0})
    assert replay.status_code == 200
    events = ndjson(replay.text)
    stored = stored_events(home, streamed)
    assert events[:-1] == stored
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert any(e["type"] == "output" and e["data"] == "started\n" for e in events)
    final = events[-1]
    assert final["type"] == "result" and final["status"] == "failed", final
    assert final["result"]["error"] == "server_stopped"
    assert final["result"]["exit_code"] == -1
    assert final["result"]["stdout"] == "started\n"  # what it streamed is kept in the record


# 3. webhook deliveries resume after a restart


def test_pending_webhook_delivery_resumes_after_restart(
    home: Path, tmp_path: Path, own: list[Server]
) -> None:
    ca, pem = make_ca(tmp_path)
    flags = (
        "--allow-private-webhooks",
        "--webhook-ca-file",
        str(pem),
        "--webhook-retry-delays",
        "2,2,2,2",
    )
    port = free_port()  # nobody listens there yet: the first try is refused
    url = f"https://127.0.0.1:{port}/hook"
    first = start_server(home, *flags)
    own.append(first)
    with first.client() as client:
        trace_id = submit_async(
            client, {"code": "echo delivered-late", "language": "bash", "webhook_url": url}
        )

        def first_try_failed() -> bool:
            view = record(client, trace_id)
            stored = execution_of(home, trace_id)
            assert stored is not None
            attempts = stored.webhook_attempts
            return bool(
                view["status"] in TERMINAL
                and view["webhook_delivery_status"] == "pending"
                and attempts >= 1
            )

        wait_until(first_try_failed, 15, "a failed first delivery try")
    first.process.kill()
    first.process.wait()

    receiver = Receiver(pem).start(ca, port=port)
    try:
        second = start_server(home, *flags)
        own.append(second)
        delivery = receiver.wait_for(1, timeout=20)[0]
    finally:
        receiver.stop()
    body = delivery.json()
    assert body["trace_id"] == trace_id
    assert body["stdout"] == "delivered-late\n"
    assert body["webhook_delivery_status"] == "pending"  # as the contract sends it
    assert int(delivery.headers["baponi-delivery-attempt"]) >= 2
    assert delivery.signed_by(cli(home, "orgs", "webhook-secret"))
    with second.client(first.key) as client:
        wait_until(
            lambda: record(client, trace_id)["webhook_delivery_status"] == "delivered",
            10,
            "the delivery to be recorded",
        )


# 4. graceful shutdown (SIGTERM)


GRACE = ("--shutdown-grace", "3")
# Exited on its own after the drain: not killed (-9) and not crashed (1). Once it is done,
# uvicorn re-raises the SIGTERM it caught, so supervisors see the usual "ended by SIGTERM".
CLEAN_EXIT = -signal.SIGTERM


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``work`` in a thread; its return value or exception lands in the list."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(work())
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def test_sigterm_lets_a_short_execution_finish(home: Path, own: list[Server]) -> None:
    server = start_server(home, *GRACE)
    own.append(server)
    marker = sleep_marker(1)  # sleeps 1 s
    code = f"bash -c 'sleep {marker}; : {marker}'; echo finished"

    def inline() -> httpx.Response:
        with server.client() as client:
            return client.post("/v1/sandbox/execute", json={"code": code, "language": "bash"})

    thread, out = in_thread(inline)
    wait_until(lambda: marker_processes(marker), 10, "the sandbox to run")
    server.process.send_signal(signal.SIGTERM)
    thread.join(15)
    answer = out[0]
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code == 200
    assert answer.json()["success"] is True
    assert answer.json()["stdout"] == "finished\n"
    assert server.process.wait(timeout=10) == CLEAN_EXIT


def refused_while_draining(server: Server) -> bool:
    """A new submission while the server drains: 503 or no connection at all."""
    try:
        with server.client() as client:
            answer = client.post("/v1/sandbox/execute", json={"code": "print(1)"})
    except httpx.ConnectError:
        return True
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "service_unavailable"
    return True


def test_sigterm_stops_a_long_execution_after_the_grace(home: Path, own: list[Server]) -> None:
    first = start_server(home, *GRACE)
    own.append(first)
    code, marker = marked_sleep(60)
    body = {"code": code, "language": "bash", "timeout": 120}

    def stream() -> list[dict[str, Any]]:
        with first.client() as client:
            answer = client.post("/v1/sandbox/execute", json=body, headers={"Accept": NDJSON})
            return ndjson(answer.text)

    thread, out = in_thread(stream)
    wait_until(lambda: marker_processes(marker), 10, "the sandbox to run")
    with first.client() as client:
        trace_id = submit_async(client, body | {"code": "sleep 60"})
        wait_until(lambda: record(client, trace_id)["status"] == "running", 10, "running")
    signalled = time.time()
    first.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert refused_while_draining(first)
    assert first.process.wait(timeout=15) == CLEAN_EXIT
    stopped = time.time()
    assert stopped - signalled >= 3  # the grace was given before the kill
    wait_gone(marker, what="the sandbox processes to end with the server")

    # The open stream was ended properly, with the shutdown as its result.
    thread.join(5)
    events = out[0]
    assert isinstance(events, list), events
    assert events[-1]["type"] == "result", events
    assert events[-1]["result"]["error"] == "server_stopped"
    streamed_id = events[0]["trace_id"]

    restarted_at = time.time()
    second = start_server(home, *GRACE)
    own.append(second)
    with second.client(first.key) as client:
        for trace in (streamed_id, trace_id):
            view = record(client, trace)
            assert_stopped(view, exit_code=137)
            # Recorded by the shutdown itself, not by the recovery at the next start.
            assert signalled < epoch(view["completed_at"]) < restarted_at, view
