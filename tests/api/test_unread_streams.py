"""Streams nobody reads, readers that read slowly, connections that never send a request:
the server's memory stays bounded, a slow reader still gets every event in order, and an
idle connection is closed after ``--idle-timeout``. A real server; clients on raw sockets
(so that they can stop reading), parsed with h11."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import h11
import pytest

from tests.harness import (
    Server,
    closed_by_server,
    connect,
    start_server,
    stop_server,
    tagged_execution,
    unique,
    wait_until,
)

pytestmark = pytest.mark.slow  # servers of their own, floods of output

MiB = 1 << 20
# Fills both output caps (1 MiB each) with bytes JSON escapes six-fold: the worst case.
FLOOD = "import os\nchunk = b'\\x01' * (1 << 20)\nos.write(2, chunk)\nos.write(1, chunk * 2)\n"
FLOODS = 24
STREAM_LIMIT = 12  # one per concurrent execution (8 for the default organisation), 4 more
GROWTH_BOUND = 64 * MiB  # what 24 unread floods may add (~30 measured; 12 held ~216 before)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    running = start_server(tmp_path / "home", "--idle-timeout", "2")
    yield running
    stop_server(running)


def rss(server: Server) -> int:
    """The server process's resident memory, in bytes."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def send_stream_request(sock: socket.socket, server: Server, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    head = (
        "POST /v1/sandbox/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {server.key}\r\nAccept: application/x-ndjson\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)


def read_response(sock: socket.socket, pause_s: float = 0.0) -> tuple[int, bytes]:
    """Status and body of one response, read ``pause_s`` apart, 16 KiB at a time."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))  # our side
    conn.send(h11.EndOfMessage())
    status, body = 0, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            time.sleep(pause_s)
            conn.receive_data(sock.recv(16 << 10))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, bytes(body)


def events_of(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.decode().splitlines()]


def assert_complete_flood(events: list[dict[str, Any]]) -> None:
    """Every event, numbered from 1 without a gap, the output whole, then the result."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "result", events[-1]["type"]
    result = events[-1]["result"]
    assert result["error"] == "output_limit_exceeded", result["error"]
    for stream in ("stdout", "stderr"):
        streamed = "".join(e["data"] for e in events if e.get("stream") == stream)
        assert streamed == "\x01" * MiB == result[stream]


def test_unread_floods_keep_memory_bounded_and_past_the_limit_streams_are_429(
    server: Server,
) -> None:
    with connect(server) as warm:  # once through every path, so that growth is the floods'
        send_stream_request(warm, server, {"code": FLOOD})
        status, body = read_response(warm)
        assert status == 200
        assert_complete_flood(events_of(body))
    before = rss(server)
    with ExitStack() as held:
        socks = []
        probes = []
        for _ in range(FLOODS):
            sock = held.enter_context(connect(server, receive_buffer=4096))
            probe = unique("flood")
            send_stream_request(sock, server, {"code": FLOOD, "metadata": {"probe": probe}})
            socks.append(sock)
            probes.append(probe)
            time.sleep(0.3)  # one after another, as each one's execution ends
        admitted = [p for p in probes if tagged_execution(server.home, p) is not None]
        assert len(admitted) == STREAM_LIMIT, len(admitted)
        for probe in admitted:
            wait_until(
                lambda p=probe: tagged_execution(server.home, p)[1] == "failed",  # type: ignore[index]
                60,
                f"flood {probe} to end",
            )
        time.sleep(2)  # the last events stored, the journals trimmed
        grown = rss(server) - before
        assert grown < GROWTH_BOUND, f"{grown / MiB:.0f} MiB for {FLOODS} unread floods"

        refused = [s for s, p in zip(socks, probes, strict=True) if p not in admitted]
        for sock in refused:
            status, body = read_response(sock)
            assert status == 429
            assert json.loads(body) == {
                "error": "rate_limited",
                "message": f"open stream limit reached ({STREAM_LIMIT}/{STREAM_LIMIT}); "
                "read or close a stream first",
            }
        # Read to the end now, an admitted flood is still whole.
        status, body = read_response(socks[probes.index(admitted[0])])
        assert status == 200
        assert_complete_flood(events_of(body))

    # Closed, they no longer count: a new stream is admitted.
    def admitted_again() -> bool:
        with connect(server) as sock:
            send_stream_request(sock, server, {"code": "print('again')"})
            status, body = read_response(sock)
        return status == 200 and events_of(body)[-1]["result"]["stdout"] == "again\n"

    wait_until(admitted_again, 10, "a stream to be admitted once the others are closed")


def test_a_slow_reader_gets_every_event_in_order(server: Server) -> None:
    with connect(server, receive_buffer=4096) as sock:
        send_stream_request(sock, server, {"code": FLOOD})
        time.sleep(3)  # the flood is over and stored while nothing was read
        status, body = read_response(sock, pause_s=0.001)
    assert status == 200
    assert_complete_flood(events_of(body))


def test_idle_and_half_open_connections_are_closed_after_the_idle_timeout(
    server: Server,
) -> None:
    with ExitStack() as held:
        silent = [held.enter_context(connect(server)) for _ in range(50)]
        partial = held.enter_context(connect(server))
        partial.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
        kept = held.enter_context(connect(server))
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # answered, then idle
        again = held.enter_context(connect(server))
        again.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        again.settimeout(5)
        assert again.recv(4096).startswith(b"HTTP/1.1 200")
        again.sendall(b"GET /health HTTP/1.1\r\n")  # answered, then a second head unfinished
        started = time.monotonic()
        for sock in [*silent, partial, kept, again]:
            closed_by_server(sock, within=10)
        waited = time.monotonic() - started
    assert 1.5 < waited < 8, waited
    with connect(server) as fresh:  # and the server still answers
        fresh.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        fresh.settimeout(5)
        assert fresh.recv(4096).startswith(b"HTTP/1.1 200")


def execute_head(server: Server, length: int) -> bytes:
    return (
        "POST /v1/sandbox/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {server.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_a_request_body_that_stalls_is_closed_after_the_idle_timeout(server: Server) -> None:
    body = json.dumps({"code": "print(1)"}).encode()
    with connect(server) as stalled:
        stalled.sendall(execute_head(server, len(body)) + body[:5])  # and never the rest
        waited = closed_by_server(stalled, within=10)
    assert 1.5 < waited < 8, waited


def test_a_slow_body_that_keeps_coming_is_served(server: Server) -> None:
    body = json.dumps({"code": "print(1)"}).encode()
    chunks = [body[i : i + 5] for i in range(0, len(body), 5)]
    with connect(server) as slow:
        slow.sendall(execute_head(server, len(body)))
        for chunk in chunks[:4]:  # 4 pauses of 1.2 s: longer in all than the 2 s timeout
            time.sleep(1.2)
            slow.sendall(chunk)
        slow.sendall(b"".join(chunks[4:]))
        slow.settimeout(30)
        status, answer = read_response(slow)
    assert status == 200, answer
    assert json.loads(answer)["stdout"] == "1\n"
