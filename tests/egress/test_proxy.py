"""The egress proxy on its own: a real tap (unix socket) in front of real loopback
upstreams, spoken to as sandboxed code would, hostile requests included."""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream

from baponi_core._net.egress import Egress, EgressLimits, Tap
from baponi_core._net.policy import NetworkPolicy
from tests.harness import wait_until_async

pytestmark = pytest.mark.anyio

OPEN = NetworkPolicy.of("open")


@asynccontextmanager
async def upstream(answer: bytes = b"hello") -> AsyncIterator[int]:
    """An HTTP server on 127.0.0.1 answering every request with ``answer`` and what it
    received (the head) after it; its port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve(stream: SocketStream) -> None:
        async with stream:
            got = b""
            with anyio.move_on_after(5):
                while b"\r\n\r\n" not in got:
                    got += await stream.receive()
            body = answer + b"\n" + got
            await stream.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                + body
            )

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield port
        tg.cancel_scope.cancel()


@asynccontextmanager
async def tap(
    tmp_path: Path, policy: NetworkPolicy = OPEN, allow_private: bool = True, **limits: float
) -> AsyncIterator[Tap]:
    egress = Egress(allow_private=allow_private, limits=EgressLimits(**limits))  # type: ignore[arg-type]
    opened = await egress.tap(tmp_path / "egress", None, policy)
    try:
        yield opened
    finally:
        opened.close()


async def ask(t: Tap, request: bytes) -> bytes:
    """Send ``request`` over the tap; all that comes back until it closes."""
    async with await anyio.connect_unix(t.path) as stream:
        await stream.send(request)
        return await read_all(stream)


async def read_all(stream: anyio.abc.ByteReceiveStream) -> bytes:
    data = b""
    with anyio.fail_after(10):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return data


async def test_plain_http_is_forwarded_in_origin_form(tmp_path: Path) -> None:
    async with upstream() as port, tap(tmp_path) as t:
        reply = await ask(
            t,
            f"GET http://127.0.0.1:{port}/a/b?c=d HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n"
            "Connection: keep-alive\r\n\r\n".encode(),
        )
    assert reply.startswith(b"HTTP/1.1 200 OK"), reply
    sent = reply.split(b"hello\n", 1)[1]
    assert sent.startswith(b"GET /a/b?c=d HTTP/1.1\r\n"), sent
    assert b"Proxy-" not in sent and b"keep-alive" not in sent
    assert b"Connection: close\r\n" in sent
    assert t.refused == 0


async def test_connect_makes_a_tunnel(tmp_path: Path) -> None:
    async with (
        upstream(b"tunnelled") as port,
        tap(tmp_path) as t,
        await anyio.connect_unix(t.path) as stream,
    ):
        await stream.send(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
        established = b""
        while b"\r\n\r\n" not in established:
            established += await stream.receive()
        assert established == b"HTTP/1.1 200 Connection established\r\n\r\n"
        await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await read_all(stream)
    assert b"tunnelled\nGET / HTTP/1.1\r\n" in reply
    assert t.moved > len(reply)  # counted both ways


@pytest.mark.parametrize(
    ("policy", "target", "reason"),
    [
        (NetworkPolicy.of("allowlist", ["127.0.0.1"]), "localhost", "not in the allowlist"),
        (
            NetworkPolicy.of("allowlist", ["127.0.0.1", "localhost"], ["localhost"]),
            "localhost",
            "denied by rule localhost",
        ),
        (
            NetworkPolicy.of("open", deny=["*.localhost"]),
            "x.localhost",
            "denied by rule *.localhost",
        ),
    ],
)
async def test_policy_refusals_say_why(
    tmp_path: Path, policy: NetworkPolicy, target: str, reason: str
) -> None:
    async with upstream() as port, tap(tmp_path, policy) as t:
        for request in (
            f"CONNECT {target}:{port} HTTP/1.1\r\n\r\n",
            f"GET http://{target}:{port}/ HTTP/1.1\r\nHost: {target}\r\n\r\n",
        ):
            reply = await ask(t, request.encode())
            assert reply.startswith(b"HTTP/1.1 403 Forbidden\r\n"), reply
            assert f"X-Baponi-Egress: refused: {reason}\r\n".encode() in reply
            assert reply.endswith(f"baponi egress proxy: {reason}\n".encode())
    assert t.refused == 2


@pytest.mark.parametrize(
    "target",
    [
        "localhost",
        "127.0.0.1",
        "127.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
        "10.1.2.3",
    ],
)
async def test_private_addresses_are_refused_without_the_flag(tmp_path: Path, target: str) -> None:
    async with upstream() as port, tap(tmp_path, allow_private=False) as t:
        reply = await ask(t, f"CONNECT {target}:{port} HTTP/1.1\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 403"), reply
    assert b"X-Baponi-Egress: refused: private address\r\n" in reply
    assert t.refused == 1


@pytest.mark.parametrize(
    "request_head",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS straight at the proxy
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # origin form: no target
        b"GET https://127.0.0.1/ HTTP/1.1\r\n\r\n",  # https is for CONNECT
        b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n",  # no port
        b"CONNECT 127.0.0.1:99999 HTTP/1.1\r\n\r\n",
        b"CONNECT 127.0.0.1:80 HTTP/2\r\n\r\n",
        b"GET  http://127.0.0.1/ HTTP/1.1\r\n\r\n",
    ],
)
async def test_what_is_no_proxy_request_gets_400(tmp_path: Path, request_head: bytes) -> None:
    async with tap(tmp_path) as t:
        reply = await ask(t, request_head)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n"), reply
    assert t.refused == 0


async def test_a_head_too_long_or_too_slow_is_cut_off(tmp_path: Path) -> None:
    async with tap(tmp_path, head_bytes=1024, head_timeout_s=0.5) as t:
        reply = await ask(t, b"GET http://127.0.0.1/ HTTP/1.1\r\nX: " + b"a" * 4096 + b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400"), reply
        async with await anyio.connect_unix(t.path) as stream:
            await stream.send(b"GET http://127.0.0.1/ HTTP/1.1\r\n")  # and nothing more
            started = time.monotonic()
            reply = await read_all(stream)
        assert reply.startswith(b"HTTP/1.1 400"), reply
        assert time.monotonic() - started < 5


async def test_connections_at_once_are_bounded(tmp_path: Path) -> None:
    async with tap(tmp_path, connections=2, head_timeout_s=30) as t:
        held = [await anyio.connect_unix(t.path) for _ in range(2)]
        await wait_until_async(lambda: t.open == 2, 5, "two connections open")
        reply = await ask(t, b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 429"), reply
        assert b"too many connections at once" in reply
        for stream in held:
            await stream.aclose()
        await wait_until_async(lambda: t.open == 0, 5, "no connection open")
        async with upstream() as port:
            reply = await ask(t, f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.1 200"), reply


async def test_new_connections_per_second_are_bounded(tmp_path: Path) -> None:
    async with upstream() as port, tap(tmp_path, burst=3, rate=0.001) as t:
        request = f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n".encode()
        replies = [await ask(t, request) for _ in range(5)]
    assert [r[:12] for r in replies] == [b"HTTP/1.1 200"] * 3 + [b"HTTP/1.1 429"] * 2
    assert b"too many new connections per second" in replies[-1]
    assert t.refused == 0  # bounds are no policy refusal


async def test_bytes_are_bounded_per_sandbox(tmp_path: Path) -> None:
    async with upstream(b"x" * 200_000) as port, tap(tmp_path, total_bytes=100_000) as t:
        request = f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n".encode()
        first = await ask(t, request)
        assert 0 < len(first) < 200_000  # cut off on the way
        second = await ask(t, request)
    assert second.startswith(b"HTTP/1.1 429"), second[:100]
    assert b"all the bytes" in second


async def test_an_idle_tunnel_is_closed(tmp_path: Path) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with (
        listener,
        tap(tmp_path, idle_timeout_s=0.5) as t,
        await anyio.connect_unix(t.path) as stream,
    ):
        await stream.send(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
        upstream_end = await listener.listeners[0].accept()  # type: ignore[attr-defined]
        started = time.monotonic()
        reply = await read_all(stream)  # nothing moves: closed after the idle timeout
        await upstream_end.aclose()
    assert reply == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert time.monotonic() - started < 5


async def test_closing_the_tap_ends_its_connections_and_socket(tmp_path: Path) -> None:
    async with tap(tmp_path, head_timeout_s=60) as t:
        stream = await anyio.connect_unix(t.path)
        await wait_until_async(lambda: t.open == 1, 5, "one connection open")
        t.close()
        assert await read_all(stream) == b""
        assert not t.path.exists()
        await stream.aclose()


@asynccontextmanager
async def tunnel(t: Tap) -> AsyncIterator[tuple[SocketStream, SocketStream]]:
    """A CONNECT tunnel through ``t`` to a raw TCP listener on 127.0.0.1: the client's
    end (past the proxy's answer) and the upstream's end."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, await anyio.connect_unix(t.path) as client:
        await client.send(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
        with anyio.fail_after(10):
            upstream_end = await listener.listeners[0].accept()  # type: ignore[attr-defined]
            established = b""
            while len(established) < len(ESTABLISHED):
                established += await client.receive(len(ESTABLISHED) - len(established))
        assert established == ESTABLISHED
        async with upstream_end:
            yield client, upstream_end  # type: ignore[misc]


ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


async def send_all(stream: SocketStream, data: bytes, eof: bool = True) -> None:
    """``data`` in pieces of 1 MiB, then an end of file; quietly stops if the stream is cut."""
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        for at in range(0, len(data), 1 << 20):
            await stream.send(data[at : at + (1 << 20)])
        if eof:
            await stream.send_eof()


async def test_the_byte_budget_is_cut_exactly_at_its_limit(tmp_path: Path) -> None:
    """Small pipes (many splices), a limit on no boundary: the client gets what the
    budget leaves after its own bytes up, not one byte more, and then nothing moves."""
    limit = 1_000_003
    async with tap(tmp_path, total_bytes=limit, buffer_bytes=65536) as t:
        async with tunnel(t) as (client, upstream_end):
            await client.send(b"go")  # 2 bytes up, counted
            assert await upstream_end.receive() == b"go"
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_all, upstream_end, random.randbytes(3 << 20))
                got = await read_all(client)
        assert len(got) == limit - 2
        assert t.moved == limit
        reply = await ask(t, b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 429") and b"all the bytes" in reply


async def test_the_budget_lets_an_end_of_file_pass_at_the_limit(tmp_path: Path) -> None:
    """Exactly the budget's bytes, then an end of file: all of it arrives, ended
    cleanly rather than cut."""
    body = random.randbytes(300_000)
    async with (
        tap(tmp_path, total_bytes=300_000, buffer_bytes=65536) as t,
        tunnel(t) as (client, upstream_end),
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(send_all, upstream_end, body)
            got = await read_all(client)
        assert got == body
        await client.send(b"x")  # the way up is still open, but the budget is spent
        assert await read_all(upstream_end) == b""
    assert t.moved == 300_000


async def test_a_client_end_of_file_is_passed_on_and_the_way_back_goes_on(
    tmp_path: Path,
) -> None:
    async with tap(tmp_path) as t, tunnel(t) as (client, upstream_end):
        await client.send(b"question")
        await client.send_eof()
        assert await read_all(upstream_end) == b"question"  # ended: the eof passed on
        await upstream_end.send(b"answer after your end")
        await upstream_end.send_eof()
        assert await read_all(client) == b"answer after your end"
        await wait_until_async(lambda: t.open == 0, 5, "the connection closed")


async def test_an_upstream_end_of_file_is_passed_on_and_the_way_up_goes_on(
    tmp_path: Path,
) -> None:
    async with tap(tmp_path) as t, tunnel(t) as (client, upstream_end):
        await upstream_end.send(b"banner")
        await upstream_end.send_eof()
        assert await read_all(client) == b"banner"
        await client.send(b"still talking")
        await client.send_eof()
        assert await read_all(upstream_end) == b"still talking"
        await wait_until_async(lambda: t.open == 0, 5, "the connection closed")


async def test_an_upstream_that_speaks_first_loses_nothing(tmp_path: Path) -> None:
    """Bytes an upstream sends the moment it is connected (SSH, SMTP) follow the
    proxy's answer, whenever they come."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def greet(stream: SocketStream) -> None:
        async with stream:
            await stream.send(b"220 hello\r\n")
            await stream.send_eof()
            await read_all(stream)

    async with listener, tap(tmp_path) as t, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, greet)
        async with await anyio.connect_unix(t.path) as client:
            await client.send(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
            assert await read_all(client) == ESTABLISHED + b"220 hello\r\n"
        tg.cancel_scope.cancel()


def pump(sock: socket.socket, data: bytes) -> str:
    """Send ``data`` and an end of file while reading ``sock`` to its end; the sha256 of
    what was read (blocking socket calls, in a thread of their own)."""
    sender = threading.Thread(target=lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
    sender.start()
    digest = hashlib.sha256()
    while chunk := sock.recv(1 << 20):
        digest.update(chunk)
    sender.join()
    return digest.hexdigest()


@pytest.mark.slow
async def test_a_big_transfer_both_ways_arrives_intact(tmp_path: Path) -> None:
    """48 MiB down and 16 MiB up at the same time, each end a plain blocking socket."""
    down, up = random.randbytes(48 << 20), random.randbytes(16 << 20)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        async with tap(tmp_path) as t:
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(t.path))
                client.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
                upstream_end = (await anyio.to_thread.run_sync(listener.accept))[0]
                with upstream_end, anyio.fail_after(30):
                    established = await anyio.to_thread.run_sync(
                        client.recv, len(ESTABLISHED), socket.MSG_WAITALL
                    )
                    assert established == ESTABLISHED
                    digests: dict[str, str] = {}

                    async def run(name: str, sock: socket.socket, data: bytes) -> None:
                        digests[name] = await anyio.to_thread.run_sync(pump, sock, data)

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(run, "down", client, up)
                        tg.start_soon(run, "up", upstream_end, down)
    assert digests["down"] == hashlib.sha256(down).hexdigest()
    assert digests["up"] == hashlib.sha256(up).hexdigest()
    assert t.moved == len(down) + len(up)


async def test_closing_the_tap_ends_its_relayed_connections(tmp_path: Path) -> None:
    async with tap(tmp_path) as t, tunnel(t) as (client, upstream_end):
        await client.send(b"ping")
        assert await upstream_end.receive() == b"ping"
        t.close()
        assert await read_all(client) == b""
        assert await read_all(upstream_end) == b""
        assert t.open == 0


@pytest.mark.slow
async def test_a_client_that_does_not_read_holds_the_proxy_to_its_buffer(tmp_path: Path) -> None:
    """The upstream sends far more than every buffer on the way; the proxy's pipe for
    that way holds no more than its bound, and the upstream is made to wait."""
    async with tap(tmp_path, buffer_bytes=65536) as t, tunnel(t) as (_, upstream_end):
        sent = 0

        async def flood() -> None:
            nonlocal sent
            chunk = bytes(1 << 20)
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                while sent < 256 << 20:
                    await upstream_end.send(chunk)
                    sent += len(chunk)

        async with anyio.create_task_group() as tg:
            tg.start_soon(flood)
            await anyio.sleep(1)  # the kernel's buffers and the pipe fill, then it waits
            (connection,) = t.connections
            assert connection.relay is not None
            assert 0 < connection.relay.ways[1].held <= 65536
            assert sent < 128 << 20  # held up, not swallowed
            tg.cancel_scope.cancel()
