"""execd's ``/proxy/{port}/...`` against a real ``baponi serve``: HTTP to services
listening on the sandbox's own loopback (``python3 -m http.server``, and an echo service
that says what reached it), through a relay inside the sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opensandbox import SandboxSync
from opensandbox.models.execd import RunCommandOpts
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.harness import Server, free_port, wait_until
from tests.opensandbox.execd import TOKEN_HEADER, execd_client, execd_of, sandbox_of, serving

pytestmark = pytest.mark.slow
FILES, ECHO, NOTHING = 8000, 8001, 8002  # ports of the sandbox's own loopback
ECHO_SERVICE = Path(__file__).with_name("echo_service.py").read_text()


@pytest.fixture(scope="module")
def osb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("proxy") / "home") as server:
        yield server


@pytest.fixture(scope="module")
def box(osb_server: Server) -> Iterator[SandboxSync]:
    with sandbox_of(osb_server) as sandbox:
        sandbox.commands.run(
            "mkdir -p /tmp/site && echo hello > /tmp/site/hello.txt\n"
            f"cat > /tmp/echo_service.py <<'BAPONI_EOF'\n{ECHO_SERVICE}BAPONI_EOF\n"
        )
        background = RunCommandOpts(background=True)
        sandbox.commands.run(
            f"python3 -m http.server {FILES} --bind 127.0.0.1 --directory /tmp/site",
            opts=background,
        )
        sandbox.commands.run(f"python3 /tmp/echo_service.py {ECHO}", opts=background)
        with execd_client(sandbox) as execd:
            for port in (FILES, ECHO):
                wait_until(lambda p=port: execd.get(f"/proxy/{p}/").status_code == 200, within=20)
        yield sandbox


@pytest.fixture()
def execd(box: SandboxSync) -> Iterator[httpx.Client]:
    with execd_client(box) as client:
        yield client


def test_a_get_reaches_a_service_on_the_sandbox_loopback(execd: httpx.Client) -> None:
    got = execd.get(f"/proxy/{FILES}/hello.txt")
    assert got.status_code == 200 and got.text == "hello\n"
    assert got.headers["content-type"].startswith("text/plain")
    assert "hello.txt" in execd.get(f"/proxy/{FILES}/").text  # its directory listing
    assert execd.get(f"/proxy/{FILES}/missing").status_code == 404  # the service's own
    assert execd.head(f"/proxy/{FILES}/hello.txt").headers["content-length"] == "6"


def test_the_lifecycle_endpoint_of_a_port_is_its_proxy(box: SandboxSync) -> None:
    endpoint = box.get_endpoint(FILES)
    assert endpoint.endpoint.endswith(f"/proxy/{FILES}")
    got = httpx.get(f"http://{endpoint.endpoint}/hello.txt", headers=endpoint.headers)
    assert got.status_code == 200 and got.text == "hello\n"


def test_a_post_goes_as_it_came_minus_the_token_and_keys(
    osb_server: Server, execd: httpx.Client
) -> None:
    server = osb_server
    got = execd.post(
        f"/proxy/{ECHO}/echo/a%20b?x=1&y=%2F",
        content=b"a body \x00 with bytes",
        headers={
            "X-Custom": "kept",
            "Connection": "x-dropped",
            "X-Dropped": "no",
            "OPEN-SANDBOX-API-KEY": server.key,  # the SDK's server-proxy mode sends it
        },
    )
    assert got.status_code == 200
    seen = got.json()
    assert seen["method"] == "POST" and seen["target"] == "/echo/a%20b?x=1&y=%2F"
    assert seen["body"] == "a body \x00 with bytes"
    headers = seen["headers"]
    assert headers["x-custom"] == "kept" and "x-dropped" not in headers
    assert TOKEN_HEADER.lower() not in headers and "open-sandbox-api-key" not in headers
    assert server.key not in got.text
    bearer = execd.get(f"/proxy/{ECHO}/", headers={"Authorization": f"Bearer {server.key}"}).json()[
        "headers"
    ]
    assert "authorization" not in bearer  # one of our keys: never to a sandbox's service
    basic = execd.get(f"/proxy/{ECHO}/", headers={"Authorization": "Basic dTpw"}).json()
    assert basic["headers"]["authorization"] == "Basic dTpw"  # the service's own
    assert headers["x-forwarded-for"] == "127.0.0.1" and headers["connection"] == "close"
    assert got.headers.get_list("set-cookie") == ["a=1", "b=2"]  # both, in order


def test_a_chunked_upload_and_a_streamed_answer(box: SandboxSync, execd: httpx.Client) -> None:
    def parts() -> Iterator[bytes]:
        yield b"one,"
        yield b"two"

    got = execd.put(f"/proxy/{ECHO}/up", content=parts())
    assert json.loads(got.text)["body"] == "one,two"
    with execd.stream("GET", f"/proxy/{ECHO}/stream") as streamed:
        lines = streamed.iter_lines()
        assert next(lines) == "first"  # before the service has written the rest
        box.commands.run("touch /tmp/go")
        assert next(lines) == "second"


def test_nothing_listening_is_a_bad_gateway(execd: httpx.Client) -> None:
    got = execd.get(f"/proxy/{NOTHING}/")
    assert got.status_code == 502 and got.json()["code"] == "BAD_GATEWAY"


def test_a_port_is_required(execd: httpx.Client) -> None:
    for path in ("/proxy", "/proxy/", "/proxy/abc/", "/proxy/70000/", "/proxy/0"):
        got = execd.get(path)
        assert got.status_code == 400, path
        assert got.json()["code"] == "INVALID_REQUEST_BODY"


def test_the_proxy_needs_the_execd_token(box: SandboxSync) -> None:
    with execd_client(box, token=False) as anonymous:
        got = anonymous.get(f"/proxy/{FILES}/hello.txt")
    assert got.status_code == 401 and "hello" not in got.text
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(box, f"/proxy/{ECHO}/ws", token=False)
    assert refused.value.response.status_code == 401


def ws_connect(box: SandboxSync, path: str, *, token: bool = True, **options: Any) -> Any:
    where, headers = execd_of(box)
    return connect(
        f"ws://{where}{path}",
        additional_headers={**headers, "X-Custom": "kept"} if token else {},
        proxy=None,
        open_timeout=15,
        max_size=None,
        **options,
    )


def test_a_websocket_goes_through_both_ways(box: SandboxSync) -> None:
    with ws_connect(box, f"/proxy/{ECHO}/ws?x=1", subprotocols=["chat", "other"]) as ws:
        assert ws.subprotocol == "chat"
        # Sent with the handshake's answer: the target, a header kept, the token not.
        assert ws.recv(timeout=10) == "hello /ws?x=1 kept None"
        ws.send("hi")
        assert ws.recv(timeout=10) == "echo:hi"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=10) == b"echo:\x00\x01"
        big = bytes(range(256)) * 1024  # 256 KiB: many reads of the relay
        ws.send(big)
        assert ws.recv(timeout=10) == b"echo:" + big
        ws.send("close-me")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4321, "bye")


def test_a_websocket_to_nothing_is_refused_as_a_bad_gateway(box: SandboxSync) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(box, f"/proxy/{NOTHING}/ws")
    assert refused.value.response.status_code == 502
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(box, "/proxy/x/ws")
    assert refused.value.response.status_code == 400


def test_a_paused_sandbox_is_a_conflict_until_resumed(
    box: SandboxSync, execd: httpx.Client
) -> None:
    box.pause()
    try:
        paused = execd.get(f"/proxy/{FILES}/hello.txt")
        assert paused.status_code == 409 and "paused" in paused.json()["message"]
    finally:
        SandboxSync.resume(box.id, connection_config=box.connection_config)
    assert execd.get(f"/proxy/{FILES}/hello.txt").text == "hello\n"


def test_the_proxy_reaches_the_sandbox_loopback_only(
    osb_server: Server, execd: httpx.Client, tmp_path: Path
) -> None:
    """A port of the host's loopback, or of another sandbox's, is nothing listening."""
    (tmp_path / "host.txt").write_text("the host\n")
    port = free_port()
    host = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/host.txt"), within=10)
        assert execd.get(f"/proxy/{port}/host.txt").status_code == 502
        with sandbox_of(osb_server) as other, execd_client(other) as other_execd:
            assert other_execd.get(f"/proxy/{port}/host.txt").status_code == 502
            assert other_execd.get(f"/proxy/{FILES}/hello.txt").status_code == 502  # box's
    finally:
        host.kill()
        host.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False
