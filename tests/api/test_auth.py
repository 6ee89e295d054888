"""Wrong keys: 401, and an address that keeps trying them is blocked (429).

These tests have their own server: a block on 127.0.0.1 would refuse every other test.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from baponi import AuthenticationError

from tests.harness import Server, assert_error, start_server, stop_server

pytestmark = pytest.mark.slow  # a server of its own for every test

EXECUTE = "/v1/sandbox/execute"
BOGUS = "sk-local-" + "0" * 40


@pytest.fixture()
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("auth"))
    yield running
    stop_server(running)


def post(server: Server, key: str | None, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if forwarded_for:  # uvicorn trusts X-Forwarded-For from loopback: another client address
        headers["X-Forwarded-For"] = forwarded_for
    return httpx.post(f"{server.url}{EXECUTE}", json={"code": "print(1)"}, headers=headers)


def test_unknown_key_is_401(own: Server) -> None:
    response = post(own, BOGUS)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "message": "invalid API key"}
    assert response.headers["www-authenticate"] == "Bearer"
    with own.sdk(BOGUS) as client, pytest.raises(AuthenticationError) as caught:
        client.execute("print(1)")
    assert caught.value.status_code == 401


def test_three_wrong_keys_block_the_address(own: Server) -> None:
    for _ in range(3):
        assert post(own, BOGUS, "203.0.113.7").status_code == 401
    blocked = post(own, own.key, "203.0.113.7")  # even the right key, from that address
    assert "failed authentication" in assert_error(blocked, 429, "rate_limited")
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    assert post(own, own.key, "203.0.113.8").status_code == 200  # other addresses are not


def test_missing_key_is_not_counted(own: Server) -> None:
    for _ in range(5):
        assert post(own, None, "203.0.113.9").status_code == 401
    assert post(own, own.key, "203.0.113.9").status_code == 200


def test_two_wrong_keys_do_not_block(own: Server) -> None:
    for _ in range(2):
        assert post(own, BOGUS, "203.0.113.10").status_code == 401
    assert post(own, own.key, "203.0.113.10").status_code == 200
