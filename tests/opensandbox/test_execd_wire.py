"""execd's commands over raw HTTP: the event framing the SDKs parse (one JSON object per
line, no ``data:`` prefix, ``timestamp`` on every event, ``init`` first, a ``ping`` every
3 s), and every error code and body of the commands routes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Server, start_server, stop_server
from tests.opensandbox.clients import Execd, opened

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def execd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Execd]:
    server: Server = start_server(tmp_path_factory.mktemp("wire") / "home")
    try:
        with opened(server) as execd:
            yield execd
    finally:
        stop_server(server)


def test_each_event_is_one_json_line_with_a_timestamp(execd: Execd) -> None:
    lines, events = execd.events({"command": "printf 'a\\nb\\n'; echo 'x \"y\"' >&2"})
    for line in lines:
        assert not line.startswith("data:")
    assert all(line == "" for line in lines[1::2])  # each event then a blank line
    assert all(isinstance(e["timestamp"], int) for e in events)
    assert events[0]["type"] == "init" and len(str(events[0]["text"])) == 32
    assert "".join(str(e["text"]) for e in events if e["type"] == "stdout") == "a\nb\n"
    assert "".join(str(e["text"]) for e in events if e["type"] == "stderr") == 'x "y"\n'
    assert events[-1]["type"] == "execution_complete"
    assert isinstance(events[-1]["execution_time"], int)


def test_a_failing_command_ends_with_its_exit_code_as_an_error(execd: Execd) -> None:
    _, events = execd.events({"command": "exit 42"})
    assert [e["type"] for e in events] == ["init", "error"]
    assert events[-1]["error"] == {"ename": "CommandExecError", "evalue": "42", "traceback": []}


def test_a_quiet_command_is_kept_alive_with_pings(execd: Execd) -> None:
    _, events = execd.events({"command": "sleep 3.5; echo done"})
    kinds = [e["type"] for e in events]
    assert kinds == ["init", "ping", "stdout", "execution_complete"]
    assert events[1]["text"] == "pong"


def test_a_background_command_ends_its_stream_at_once(execd: Execd) -> None:
    _, events = execd.events({"command": "sleep 20", "background": True})
    assert [e["type"] for e in events] == ["init", "execution_complete"]
    command_id = events[0]["text"]
    status = execd.client.get(f"/command/status/{command_id}").json()
    assert status["running"] is True and status["content"] == "sleep 20"
    for cursor in ("x", "-1", "²"):  # "²" is a digit to str.isdigit, not to int()
        bad = execd.client.get(f"/command/{command_id}/logs", params={"cursor": cursor})
        assert bad.status_code == 400 and bad.json()["code"] == "INVALID_REQUEST_BODY", cursor
    assert execd.client.delete("/command", params={"id": command_id}).status_code == 200
    again = execd.client.delete("/command", params={"id": command_id})
    assert again.status_code == 500 and again.json()["code"] == "RUNTIME_ERROR"


def test_the_error_codes_of_the_commands_routes(execd: Execd) -> None:
    client = execd.client
    unknown = client.get("/command/status/" + "0" * 32)
    assert unknown.status_code == 404 and unknown.json()["code"] == "INVALID_REQUEST_BODY"
    logs = client.get("/command/" + "0" * 32 + "/logs")
    assert logs.status_code == 400 and logs.json()["code"] == "INVALID_REQUEST_BODY"
    _, events = execd.events({"command": "true"})  # foreground: it has no logs
    foreground = client.get(f"/command/{events[0]['text']}/logs")
    assert foreground.status_code == 400
    missing = client.delete("/command")
    assert missing.status_code == 400 and missing.json()["code"] == "MISSING_QUERY"
    for body in ({}, {"command": ""}, {"command": "true", "timeout": 0}, {"command": 1}):
        bad = client.post("/command", json=body)
        assert bad.status_code == 400 and bad.json()["code"] == "INVALID_REQUEST_BODY", body
    not_json = client.post("/command", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and set(not_json.json()) == {"code", "message"}
    other_user = client.post("/command", json={"command": "id", "uid": 0})
    assert other_user.status_code == 400 and "1000" in other_user.json()["message"]
    gid_alone = client.post("/command", json={"command": "id", "gid": 1000})
    assert gid_alone.status_code == 400
    assert client.get("/no-such-route").status_code == 404
