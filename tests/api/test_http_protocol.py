"""The server's HTTP/1.1 protocol (``BoundedHttpTools``, on llhttp) on raw sockets, for
what an HTTP client would not send: invalid requests are clean 400s (no traceback in the
log), a request head or a body's trailers over 16 KiB is refused however it comes, and
pipelined requests and ``Expect: 100-continue`` are served. The time bounds (idle, slow
and stalled clients) are in ``test_unread_streams.py``."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest

from tests.harness import Server, closed_by_server, connect, start_server, stop_server

INVALID = "Invalid HTTP request received."


@pytest.fixture()
def no_traceback(server: Server) -> Iterator[None]:
    """The server logs no traceback while the test runs (a warning is all it says)."""
    logged = len(server.log)
    yield
    assert "Traceback" not in server.log[logged:]


def answer(server: Server, request: bytes) -> bytes:
    """All the server sends for ``request`` until it closes the connection."""
    with connect(server) as sock:
        sock.sendall(request)
        sock.settimeout(10)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    return bytes(received)


def responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """Status and body of the next ``count`` responses on ``sock`` (a 100 Continue is
    not one of them)."""
    conn = h11.Connection(h11.CLIENT)
    answers: list[tuple[int, bytes]] = []
    status, body = 0, bytearray()
    asked(conn)
    while len(answers) < count:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            answers.append((status, bytes(body)))
            status, body = 0, bytearray()
            if len(answers) < count:
                conn.start_next_cycle()
                asked(conn)
    return answers


def asked(conn: h11.Connection) -> None:
    """Our side of an exchange, for h11's state (the request itself went out raw)."""
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())


def execute(server: Server, code: str, *extra: str) -> bytes:
    body = json.dumps({"code": code, "language": "bash"}).encode()
    head = [
        "POST /v1/sandbox/execute HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {server.key}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *extra,
    ]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHo st: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n",
        b"GET /health HTTP/1.1\nHost: x\n\n",  # bare line feeds
        # Framing a proxy in front could read otherwise (request smuggling):
        b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=[
        "garbage",
        "version",
        "nul-in-target",
        "non-ascii-target",
        "space-in-name",
        "space-before-colon",
        "control-in-value",
        "obsolete-fold",
        "bare-lf",
        "length-and-chunked",
        "two-lengths",
        "negative-length",
        "bad-chunk-size",
    ],
)
def test_an_invalid_request_is_a_400_and_the_connection_closed(
    server: Server, request_bytes: bytes, no_traceback: None
) -> None:
    received = answer(server, request_bytes)
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n"), received
    assert received.endswith(INVALID.encode()), received


def padded_header(size: int) -> bytes:
    return b"X-Pad: " + b"a" * size + b"\r\n"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health HTTP/1.1\r\nHost: x\r\n" + padded_header(20_000) + b"\r\n",
        b"GET /health?" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\n" + padded_header(1_000) * 20 + b"\r\n",
        # The head is small; its body's trailers are not.
        b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\na\r\n0\r\n" + padded_header(20_000) + b"\r\n",
    ],
    ids=["one-header", "target", "many-headers", "trailers"],
)
def test_a_head_over_16_kib_in_one_piece_is_a_400(
    server: Server, request_bytes: bytes, no_traceback: None
) -> None:
    received = answer(server, request_bytes)
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n"), received


def sent_until_closed(server: Server, endless: bytes) -> int:
    """Bytes of ``endless`` sent, 1 KiB at a time, before the server closed."""
    sent = 0
    with connect(server) as sock:
        try:
            while sent < len(endless):
                sent += sock.send(endless[sent : sent + 1024])
                time.sleep(0.002)  # one read each, or nearly
        except (BrokenPipeError, ConnectionResetError):
            return sent
    raise AssertionError(f"all {sent} bytes were taken")


@pytest.mark.parametrize(
    "start",
    [
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ",  # a value that never ends
        b"GET /health?",  # a target that never ends
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-",  # a name that never ends
    ],
    ids=["value", "target", "name"],
)
def test_a_head_that_keeps_coming_past_16_kib_is_cut_short(
    server: Server, start: bytes, no_traceback: None
) -> None:
    sent = sent_until_closed(server, start + b"a" * (1 << 20))
    assert sent < 128 * 1024, sent  # 16 KiB, what the socket buffers held meanwhile


def test_a_head_under_16_kib_in_pieces_is_served(server: Server) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + padded_header(12_000) + b"\r\n"
    with connect(server) as sock:
        for start in range(0, len(head), 1024):
            sock.sendall(head[start : start + 1024])
            time.sleep(0.002)
        sock.settimeout(10)
        assert responses(sock, 1) == [(200, b'{"status":"ok"}')]


@pytest.mark.slow  # a 3 s execution, longer than the idle timeout
def test_pipelined_requests_are_answered_in_order_however_long_the_first(tmp_path: Path) -> None:
    """A connection whose requests are not all answered is not idle: the second and third
    request wait, already read, while the first runs past the 2 s idle timeout."""
    server = start_server(tmp_path / "home", "--idle-timeout", "2")
    try:
        answers = pipelined(server)
    finally:
        stop_server(server)
    (first, first_body), health, (third, third_body) = answers
    assert (first, json.loads(first_body)["stdout"]) == (200, "one\n")
    assert health == (200, b'{"status":"ok"}')
    assert (third, json.loads(third_body)["stdout"]) == (200, "two\n")


def pipelined(server: Server) -> list[tuple[int, bytes]]:
    """Three requests in one write; their answers, and the close the last one asked for."""
    with connect(server) as sock:
        sock.sendall(
            execute(server, "sleep 3; echo one")
            + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
            + execute(server, "echo two", "Connection: close")
        )
        sock.settimeout(30)
        answers = responses(sock, 3)
        assert closed_by_server(sock, within=5) < 1
    return answers


def test_expect_100_continue_is_answered_before_the_body(server: Server) -> None:
    request = execute(server, "echo continued", "Expect: 100-continue")
    head, body = request.split(b"\r\n\r\n", 1)
    with connect(server) as sock:
        sock.sendall(head + b"\r\n\r\n")
        sock.settimeout(10)
        assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        [(status, answered)] = responses(sock, 1)
    assert status == 200, answered
    assert json.loads(answered)["stdout"] == "continued\n"


def test_the_log_says_why(server: Server) -> None:
    logged = len(server.log)
    answer(server, b"GARBAGE\r\n\r\n")
    assert f"WARNING:  {INVALID}" in server.log[logged:]
